"""How many threads the CPU kernels run on, and how a thread waits for the others.

torch's CPU operations and our kernels (:mod:`core.models.kernels`) split each matmul over
OpenMP threads (GNU libgomp in torch's wheels). Between two parallel regions a thread that is
done spins, by default for 300,000 rounds, before it sleeps. On an idle machine that is the
fastest; beside another busy process it is a collapse: the spinning threads take the cores the
others need, and a step waits for its slowest thread. Measured on this 2-core machine, one
client decoding while two other processes kept both cores busy (``bench/threads.md``):

- the default spin: the 135M model fell from 130-152 tok/s to 0.8-26, the 1B-shaped Q4_1 one
  from 39-42 to 2-11;
- a spin of 10,000 rounds: 122-134 idle and 56-60 busy (135M), 40-42 idle and 17-20 busy (1B);
- no spin (``GOMP_SPINCOUNT=0``): 102-122 idle, 43-89 busy; one thread: 114 idle, 64 busy.

So the default is every CPU this process may run on, waiting :data:`SPIN_COUNT` rounds.
``--threads`` sets the count; ``OMP_NUM_THREADS`` and ``GOMP_SPINCOUNT`` set by the user win
over these defaults. Both must be settled before torch is imported: :func:`configure` runs
first thing in the CLI, and ``/health`` reports what was chosen (:func:`report`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

SPIN_COUNT = 10_000


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def configure(threads: int | None) -> None:
    """Settle the thread count (``threads``, else ``OMP_NUM_THREADS``, else every available
    CPU) and the wait policy, in the environment torch and libgomp read when they start; where
    torch is already imported, its thread count is set directly."""
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))
    os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)


def report() -> dict[str, Any]:
    """The threads in use and how they wait, for ``/health``."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else int(
        os.environ.get("OMP_NUM_THREADS") or available_cpus())
    policy = os.environ.get("OMP_WAIT_POLICY", "").lower()
    spin = os.environ.get("GOMP_SPINCOUNT")
    wait = policy if policy in ("active", "passive") else (
        f"spin {spin} rounds, then sleep" if spin else "libgomp's default")
    return {"threads": threads, "cpus": available_cpus(), "wait": wait}
