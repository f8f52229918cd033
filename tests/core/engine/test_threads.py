"""The thread count and wait policy settled before torch starts its threads."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from core.engine import threads


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_defaults_every_available_cpu_and_a_short_spin() -> None:
    threads.configure(None)
    assert os.environ["OMP_NUM_THREADS"] == str(threads.available_cpus())
    assert os.environ["GOMP_SPINCOUNT"] == str(threads.SPIN_COUNT)
    assert threads.report()["wait"] == f"spin {threads.SPIN_COUNT} rounds, then sleep"


def test_the_flag_wins_over_the_environment_and_applies_to_a_running_torch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    threads.configure(1)
    assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
    assert threads.report()["threads"] == 1


def test_the_users_wait_policy_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    threads.configure(None)
    assert os.environ["GOMP_SPINCOUNT"] == "0"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert threads.report()["wait"] == "passive"
