"""The thread count and wait policy settled before torch starts its threads, and the governor
that fits the count to the other processes' load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from core.engine import threads


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.setenv(name, "")  # recorded, so what configure() writes is undone after
        monkeypatch.delenv(name)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    monkeypatch.setattr(threads, "_adaptive", False)
    monkeypatch.setattr(threads, "_current", None)


def test_by_default_every_cpu_with_libgomps_wait_and_a_governor() -> None:
    threads.configure(None)
    assert os.environ["OMP_NUM_THREADS"] == str(len(threads.available_cpus()))
    assert "GOMP_SPINCOUNT" not in os.environ
    assert isinstance(threads.governor(), threads.Governor)
    assert threads.report()["policy"] == "adaptive"
    assert threads.report()["wait"] == "libgomp's default"


def test_a_fixed_count_wins_over_the_environment_and_spins_briefly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    threads.configure(1)
    assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
    assert threads.governor() is None
    assert threads.report() | {"cpus": 0} == {"threads": 1, "cpus": 0, "policy": "fixed",
                                            "wait": f"spin {threads.SPIN_COUNT} rounds, then sleep"}


def test_the_users_own_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    threads.configure(None)
    assert os.environ["GOMP_SPINCOUNT"] == "0" and threads.governor() is None
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert threads.report()["wait"] == "passive"


HOG = "import time\nend = time.time() + 20\nwhile time.time() < end:\n    pass\n"


def test_the_governor_gives_up_the_cpus_other_processes_take() -> None:
    """Two processes spinning on every CPU this one may use: one thread is left; once they
    stop, every CPU again."""
    governor = threads.Governor(interval=0.5)
    cpus = len(governor.cpus)
    governor.tick()  # the first sample
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(cpus)]
    try:
        time.sleep(1.0)
        governor.tick()
        assert governor.threads == 1 and torch.get_num_threads() == 1
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    time.sleep(1.0)
    governor.tick()
    assert governor.threads == cpus and torch.get_num_threads() == cpus
