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
    """Processes spinning on every CPU this one may use: one thread is left."""
    governor = threads.Governor(interval=0.5)
    governor.tick()  # the first sample
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in governor.cpus]
    try:
        for _ in range(20):  # an engine's steps
            time.sleep(0.05)
            governor.tick()
        assert governor.threads == 1 and torch.get_num_threads() == 1
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_the_governor_counts_only_the_other_processes_time() -> None:
    """Fitted to the CPUs left: the process's own ticks do not count, a fraction under half a
    CPU leaves every CPU in use, and the count comes back when the others stop."""
    now, samples = [0.0], []
    governor = threads.Governor(sample=lambda: samples.pop(0), clock=lambda: now[0])
    cpus, hz = len(governor.cpus), governor.ticks_per_s
    busy = own = 0

    def second(others: float, ours: float) -> int:
        nonlocal busy, own
        now[0] += 1.0
        own += round(ours * hz)
        busy += round((ours + others) * hz)
        samples.append((busy, own))
        governor.tick()
        return governor.threads

    second(0, 0)  # the first sample
    assert second(others=0, ours=cpus) == cpus  # its own load: no reason to shrink
    assert second(others=cpus, ours=1) == 1
    assert second(others=0.3, ours=cpus) == cpus
    now[0] += 0.5
    governor.tick()  # within the interval: no sample taken
    assert samples == [] and governor.threads == cpus


def test_what_others_did_while_the_engine_idled_is_not_held_against_it() -> None:
    """After an idle spell the governor samples afresh and judges a quarter second later, by
    what the others do then."""
    now, samples = [0.0], []
    governor = threads.Governor(sample=lambda: samples.pop(0), clock=lambda: now[0])
    cpus, hz = len(governor.cpus), governor.ticks_per_s
    busy = own = 0

    def after(seconds: float, others: float) -> int:
        nonlocal busy, own
        now[0] += seconds
        busy += round(others * seconds * hz)
        samples.append((busy, own))
        governor.tick()
        return governor.threads

    after(0, 0)  # the first sample
    assert after(0.25, others=0) == cpus  # judged a quarter second after the first sample
    assert after(10, others=cpus) == cpus  # the others' load while idle: a fresh sample
    assert after(0.25, others=0) == cpus
    assert samples == []
    assert after(10, others=0) == cpus
    assert after(0.25, others=cpus) == 1  # busy now: given up within a quarter second
