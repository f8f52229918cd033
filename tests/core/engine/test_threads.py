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


class Clocked:
    """A governor on a fake clock and fake /proc: :meth:`after` lets time pass with the others'
    and this process's load, ticks, and gives the thread count."""

    def __init__(self) -> None:
        self.now = 0.0
        self.samples: list[tuple[int, int]] = []
        self.governor = threads.Governor(sample=lambda: self.samples.pop(0),
                                         clock=lambda: self.now)
        self.cpus, self.hz = len(self.governor.cpus), self.governor.ticks_per_s
        self.busy = self.own = 0

    def after(self, seconds: float, others: float, ours: float = 0) -> int:
        self.now += seconds
        self.own += round(ours * seconds * self.hz)
        self.busy += round((ours + others) * seconds * self.hz)
        self.samples.append((self.busy, self.own))
        self.governor.tick()
        return self.governor.threads


def test_the_governor_counts_only_the_other_processes_time() -> None:
    """Fitted to the CPUs left: the process's own ticks do not count, a fraction under half a
    CPU leaves every CPU in use, and the count comes back when the others stop."""
    clocked = Clocked()
    cpus = clocked.cpus
    clocked.after(0, others=0)  # the first sample
    assert clocked.after(1, others=0, ours=cpus) == cpus  # its own load: no reason to shrink
    assert clocked.after(1, others=cpus, ours=1) == 1
    assert clocked.after(1, others=0.3, ours=cpus) == cpus
    clocked.now += 0.5
    clocked.governor.tick()  # within the interval: no sample taken
    assert clocked.samples == [] and clocked.governor.threads == cpus


def test_what_others_did_while_the_engine_idled_is_not_held_against_it() -> None:
    """After an idle spell the governor samples afresh and judges a quarter second later, by
    what the others do then."""
    clocked = Clocked()
    cpus = clocked.cpus
    clocked.after(0, others=0)  # the first sample
    assert clocked.after(0.25, others=0) == cpus  # judged a quarter second after the first
    assert clocked.after(10, others=cpus) == cpus  # the others' load while idle: a fresh sample
    assert clocked.after(0.25, others=0) == cpus
    assert clocked.samples == []
    assert clocked.after(10, others=0) == cpus
    assert clocked.after(0.25, others=cpus) == 1  # busy now: given up within a quarter second
