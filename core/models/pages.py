"""Memory for the kernels' weights in transparent huge pages (2 MiB), where Linux gives them.

A decode step reads every weight once, one stream per thread through 0.6-1.1 GB at 1B: in
4 KiB pages, a new page (a TLB miss, and a stop for the prefetchers) every 4 KiB. Linux backs
anonymous memory with huge pages only where a program asks (``madvise``, the default of this
machine and of most distributions) and torch's allocator never asks. Measured on this 2-core
machine, decode steps of one sequence of the 1B Q5_K_M file in one process, its weights in
4 KiB pages then in these, alternating: 36.7 and 43.6 tok/s (medians of 8 rounds); with the
4-bit kernels' prefetch at 4 KiB, the Q4_0 file's went from 34.5-40.6 to 48.8-60.1 tok/s
(``bench.engine_bench``, alternating with the commit before).

A tensor of a huge page or more gets private anonymous memory of its own, started on a 2 MiB
boundary, whose whole huge pages are ``madvise``d (the tail, less than one, stays in small
pages). Smaller ones (scales, a mixture's experts) are cut one after another from shared
32 MiB regions so: a region lives as long as any tensor cut from it. Where the kernel offers no
huge pages the memory is plain pages, as torch's.

A server may :func:`reserve` the memory of the model it is about to load before its own
imports: a thread faults it in, from its end back, while the process imports and then while
the load cuts its tensors from the front. This machine's hypervisor backs a guest's free memory
lazily (free page reporting, in blocks of 2 MiB): the first write to a huge page that has been
free a while waits 3-12 ms for the host, 2-4 s of one thread for a 1B model's 0.7 GB, most of a
cold start's load. The thread faults each page by a write, not ``MADV_POPULATE_WRITE``, which
holds the process's memory map lock: the imports' own mappings waited for it, and took 4.2-4.5
s instead of 1.4-1.6. Measured on the 1B Q4_K_M file, starts after 15 s idle, alternating with
and without: ready in 4.7-5.3 s against 5.0-6.2 (six pairs, each won). This module imports no
torch until a tensor is made: a reserve starts before torch's import (1 s) does.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HUGE_PAGE = 2 << 20
REGION = 16 * HUGE_PAGE  # shared by the tensors smaller than a huge page
ALIGN = 64  # a cache line: where each tensor cut from a region starts


def _mapping(size: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping of at least ``size`` zeroed bytes, and the offset in it of
    a huge page's boundary from which the ``size`` bytes' whole huge pages are madvised."""
    # a huge page's worth more of address space (not of memory) to start on a boundary
    memory = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -_address(memory) % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):  # whole huge pages only: the tail's last one would
        # take 2 MiB of memory for what may be a few bytes
        memory.madvise(mmap.MADV_HUGEPAGE, start, size // HUGE_PAGE * HUGE_PAGE)
    return memory, start


def _address(memory: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(memory))


def _bytes(memory: mmap.mmap, start: int, size: int) -> torch.Tensor:
    """(size,) uint8 over bytes start.. of ``memory``: a storage of its own, of exactly those
    bytes (what ``quant.weight_bytes`` counts), holding the mapping while it lives."""
    import torch

    return torch.frombuffer(memoryview(memory)[start:start + size], dtype=torch.uint8)


class _Regions:
    """Cuts small tensors' bytes, one after another, from shared huge-page regions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._region: mmap.mmap | None = None
        self._next = self._end = 0

    def take(self, size: int) -> torch.Tensor:
        with self._lock:
            if self._region is None or self._next + size > self._end:
                self._region, self._next = _mapping(REGION)
                self._end = self._next + REGION
            out = _bytes(self._region, self._next, size)
            self._next += -(-size // ALIGN) * ALIGN
            return out


_regions = _Regions()


class _Reserve:
    """Memory faulted in by a thread of its own, from its end back, while the tensors are cut
    from its front (a page cut before the thread reached it is faulted by its first write, as
    any); a cut waits only for the page being faulted, where the two meet."""

    def __init__(self, size: int) -> None:
        self._changed = threading.Condition()
        self._memory, self._first = _mapping(size)
        self._next, self._end = self._first, self._first + size
        self._open = True
        self._faulting: int | None = None  # the huge page being faulted in
        self._address = _address(self._memory)
        threading.Thread(target=self._fault, name="infermcp-pages", daemon=True).start()

    def _fault(self) -> None:
        page = self._end - self._end % HUGE_PAGE
        while True:
            with self._changed:
                self._faulting = None
                self._changed.notify_all()
                page -= HUGE_PAGE
                if not self._open or page < -(-self._next // HUGE_PAGE) * HUGE_PAGE:
                    return  # closed, or met the cuts
                self._faulting = page
            ctypes.memset(self._address + page, 0, 1)  # zero already: faults the page in

    def take(self, size: int) -> torch.Tensor | None:
        """``size`` bytes cut from the front, or None once closed or too few are left."""
        with self._changed:
            start = -(-self._next // ALIGN) * ALIGN
            if not self._open or start + size > self._end:
                return None
            while self._faulting is not None and start + size > self._faulting:
                self._changed.wait()
            self._next = start + size
        return _bytes(self._memory, start, size)

    def close(self) -> int:
        """Stop cutting and faulting; give back the whole huge pages never cut. Returns the
        bytes cut."""
        with self._changed:
            self._open = False
            while self._faulting is not None:
                self._changed.wait()
            rest = -(-self._next // HUGE_PAGE) * HUGE_PAGE
            if rest < self._end and hasattr(mmap, "MADV_DONTNEED"):
                self._memory.madvise(mmap.MADV_DONTNEED, rest, self._end - rest)
            return self._next - self._first


_reserve: _Reserve | None = None


def reserve(size: int) -> None:
    """Fault in ``size`` bytes ahead of a model's load, and a huge page more for the cache
    lines between tensors (a thread does it; this returns at once): :func:`empty` cuts its
    tensors from them until :func:`release`."""
    global _reserve
    if _reserve is None and size >= HUGE_PAGE:
        _reserve = _Reserve(size + HUGE_PAGE)


def release() -> None:
    """End the reserve, if any: what was not cut from it goes back to the system."""
    global _reserve
    if _reserve is not None:
        _reserve.close()
        _reserve = None


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed contiguous tensor in huge pages: of its own when it spans one, else cut from a
    shared region."""
    import torch

    size = math.prod(shape) * dtype.itemsize
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    reserved = _reserve.take(size) if _reserve is not None else None
    memory = reserved if reserved is not None else _bytes(*_mapping(size), size) \
        if size >= HUGE_PAGE else _regions.take(size)
    return memory.view(dtype).view(shape)


def contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s values, contiguous, copied into :func:`empty`'s memory."""
    out = empty(tuple(tensor.shape), tensor.dtype)
    out.copy_(tensor)
    return out
