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
"""

from __future__ import annotations

import math
import mmap
import threading

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
    return torch.frombuffer(memory, dtype=torch.uint8, count=1).data_ptr()


def _bytes(memory: mmap.mmap, start: int, size: int) -> torch.Tensor:
    """(size,) uint8 over bytes start.. of ``memory``: a storage of its own, of exactly those
    bytes (what ``quant.weight_bytes`` counts), holding the mapping while it lives."""
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


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed contiguous tensor in huge pages: of its own when it spans one, else cut from a
    shared region."""
    size = math.prod(shape) * dtype.itemsize
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    memory = _bytes(*_mapping(size), size) if size >= HUGE_PAGE else _regions.take(size)
    return memory.view(dtype).view(shape)


def contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s values, contiguous, copied into :func:`empty`'s memory."""
    out = empty(tuple(tensor.shape), tensor.dtype)
    out.copy_(tensor)
    return out
