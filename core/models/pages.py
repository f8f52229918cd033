"""Memory for the kernels' weights in transparent huge pages (2 MiB), where Linux gives them.

A decode step reads every weight once, one stream per thread through 0.6-1.1 GB at 1B: in
4 KiB pages, a new page (a TLB miss, and a stop for the prefetchers) every 4 KiB. Linux backs
anonymous memory with huge pages only where a program asks (``madvise``, the default of this
machine and of most distributions) and torch's allocator never asks. Measured on this 2-core
machine, the 1B Q5_K_M file's matmuls in one process, weights in 4 KiB pages then in these,
alternating: 22.7-24.9 and 24.6-26.8 GB/s (1.02-1.16x, median 1.07x).

Large tensors get private anonymous memory of their own, started on a 2 MiB boundary, whose
whole huge pages are ``madvise``d (the tail, less than one, stays in small pages): the memory
held is what they hold. Where the kernel offers no huge pages it is plain pages, as torch's.
"""

from __future__ import annotations

import math
import mmap

import torch

HUGE_PAGE = 2 << 20


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed contiguous tensor, in huge pages when it spans at least one."""
    size = math.prod(shape) * dtype.itemsize
    if size < HUGE_PAGE:
        return torch.zeros(shape, dtype=dtype)
    # anonymous memory comes zeroed; a huge page's worth more of address space (not of memory)
    # lets the tensor start on a huge page's boundary
    memory = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = torch.frombuffer(memory, dtype=torch.uint8)  # holds the mapping while it lives
    start = -whole.data_ptr() % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):  # whole huge pages only: the tail's last one would
        # take 2 MiB of memory for what may be a few bytes
        memory.madvise(mmap.MADV_HUGEPAGE, start, size // HUGE_PAGE * HUGE_PAGE)
    return whole[start:start + size].view(dtype).view(shape)

def contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s values, contiguous (as ``tensor.contiguous()``), copied into huge pages
    when they span one."""
    if tensor.numel() * tensor.element_size() < HUGE_PAGE:
        return tensor.contiguous()
    out = empty(tuple(tensor.shape), tensor.dtype)
    out.copy_(tensor)
    return out
