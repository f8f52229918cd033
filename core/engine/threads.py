"""How many threads the CPU kernels run on, and how a thread waits for the others.

torch's CPU operations and our kernels (:mod:`core.models.kernels`) split each matmul over
OpenMP threads (GNU libgomp in torch's wheels). Between two parallel regions a thread that is
done spins, by default for 300,000 rounds, before it sleeps. On an idle machine that is the
fastest; beside another busy process it is a collapse: the spinning threads take the cores the
others need, and each step waits for its slowest thread. Measured on this 2-core machine, one
client decoding while two other processes kept both cores busy (``bench/threads.md``, the 135M
model, two rounds, idle / busy tok/s):

- libgomp's own wait: 112-119 / 24-29 (an earlier run: 2-28);
- a spin of 10,000 rounds: 110-132 / 21-55; no spin: 99-105 / 39-42; one thread: 98-99 / 55-63.

No fixed policy is best on both. So by default a :class:`Governor` fits the thread count, once a
second, to the CPUs the other processes leave free (read from ``/proc/stat`` for the CPUs this
process may use, less this process's own time): every CPU on an idle machine, with libgomp's
own wait; fewer beside busy processes, one on a 2-core machine, where no thread spins:
112-139 / 59-68 in the same run; the 1B-shaped Q4_1 file, 38.7 / 18.2 where libgomp's own
wait gave 38.2 / 6.4 (``bench/threads-1b.md``). ``--threads N`` (or ``OMP_NUM_THREADS``) fixes
the count instead, with a 10,000-round spin (:data:`SPIN_COUNT`) unless ``GOMP_SPINCOUNT`` says
otherwise. The environment must be settled before torch is imported: :func:`configure` runs
first thing in the CLI; ``/health`` reports the outcome (:func:`report`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SPIN_COUNT = 10_000  # rounds a thread spins before it sleeps, when the count is fixed
INTERVAL_S = 1.0  # how often a governor looks at the other processes' CPU time
RESUME_S = 0.25  # how soon after its first sample (or an idle spell's) it judges them

_adaptive = False
_current: int | None = None  # what the governors last set


def available_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, else all of the machine's)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def configure(threads: int | None) -> None:
    """Settle the thread policy in the environment torch and libgomp read when they start:
    ``threads`` (or a user's ``OMP_NUM_THREADS``) fixes the count and shortens the spin; with
    neither, every available CPU, libgomp's own wait, and a :class:`Governor` per engine. Where
    torch is already imported, a fixed count is set directly."""
    global _adaptive
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    _adaptive = "OMP_NUM_THREADS" not in os.environ
    if _adaptive:
        os.environ["OMP_NUM_THREADS"] = str(len(available_cpus()))
    else:
        os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)


def governor() -> Governor | None:
    """A governor for an engine's thread, when the count is not fixed."""
    return Governor() if _adaptive else None


def report() -> dict[str, Any]:
    """The threads in use and how they wait, for ``/health``."""
    torch = sys.modules.get("torch")
    threads = _current or (torch.get_num_threads() if torch is not None else int(
        os.environ.get("OMP_NUM_THREADS") or len(available_cpus())))
    policy = os.environ.get("OMP_WAIT_POLICY", "").lower()
    spin = os.environ.get("GOMP_SPINCOUNT")
    wait = policy if policy in ("active", "passive") else (
        f"spin {spin} rounds, then sleep" if spin else "libgomp's default")
    return {"threads": threads, "cpus": len(available_cpus()),
            "policy": "adaptive" if _adaptive else "fixed", "wait": wait}


class Governor:
    """Fits the calling thread's OpenMP thread count to the CPUs that other processes leave
    free. :meth:`tick` runs in the engine's thread between steps (OpenMP's count is a
    per-thread setting) and measures at most once an interval.

    A tick after an idle spell (no tick for an interval) judges nothing: what other processes
    did while the engine waited says nothing of now, and held against the next request it took
    a thread away for that request's first second (a third of a 128-token stream of the 1B
    file). It takes a fresh sample instead and judges :data:`RESUME_S` later."""

    def __init__(self, interval: float = INTERVAL_S,
                 sample: Callable[[], tuple[int, int] | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``sample``: (busy ticks of our CPUs, this process's ticks), by default read from
        /proc (:meth:`read_proc`); ``clock``: seconds."""
        self.cpus = available_cpus()
        self.interval = interval
        self.threads = len(self.cpus)
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._sample = sample or self.read_proc
        self._clock = clock
        self._last: tuple[float, int, int] | None = None  # (when, busy, own) sampled
        self._last_tick: float | None = None
        self._wait = interval  # from the last sample to the next

    def tick(self) -> None:
        now = self._clock()
        if self._last_tick is not None and now - self._last_tick > self.interval:
            self._last = None  # an idle spell: judge afresh
        self._last_tick = now
        if self._last is not None and now - self._last[0] < self._wait:
            return
        sample = self._sample()
        if sample is None:
            return
        busy, own = sample
        if self._last is not None:
            seconds, busy_before, own_before = now - self._last[0], *self._last[1:]
            others = (busy - busy_before - (own - own_before)) / self.ticks_per_s / seconds
            self.apply(max(1, min(len(self.cpus), round(len(self.cpus) - others))))
        self._wait = self.interval if self._last is not None else min(RESUME_S, self.interval)
        self._last = (now, busy, own)

    def apply(self, threads: int) -> None:
        global _current
        if threads != self.threads:
            import torch

            log.info("threads: %d (other processes are using %s of %d CPUs)", threads,
                     "some" if threads < len(self.cpus) else "none", len(self.cpus))
            torch.set_num_threads(threads)
            self.threads = threads
        _current = threads

    def read_proc(self) -> tuple[int, int] | None:
        """(busy ticks of our CPUs, this process's ticks), or None where /proc has neither."""
        try:
            with open("/proc/stat") as f:
                lines = f.read().splitlines()
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        wanted = {f"cpu{n}" for n in self.cpus}
        busy = 0
        for line in lines:
            name, *values = line.split()
            if name in wanted:  # user nice system idle iowait irq softirq steal ...
                ticks = [int(v) for v in values[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]
        return busy, int(fields[11]) + int(fields[12])  # utime, stime


__all__ = ["Governor", "available_cpus", "configure", "governor", "report"]
