from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from core.models import pages
from core.models.quant import Int4Linear

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
huge_pages_here = pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")


def mapping_kib(address: int, field: str) -> int:
    """KiB of ``field`` (``Rss``, ``AnonHugePages``) of the mapping that holds ``address``."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError("no mapping holds the address")


def huge_kib(tensor: torch.Tensor) -> int:
    """KiB of huge pages in the mapping that holds ``tensor``'s first byte."""
    return mapping_kib(tensor.data_ptr(), "AnonHugePages")


def test_empty_is_zeroed_and_starts_on_a_huge_page() -> None:
    out = pages.empty((3000, 1001), torch.float16)  # 6 MB: two whole huge pages and a tail
    assert out.shape == (3000, 1001) and out.dtype == torch.float16 and out.is_contiguous()
    assert out.data_ptr() % pages.HUGE_PAGE == 0
    assert not out.any()
    small = pages.empty((3, 5), torch.int8)
    assert small.shape == (3, 5) and not small.any()
    assert pages.empty((0, 4), torch.float32).shape == (0, 4)


@huge_pages_here
def test_small_tensors_are_cut_one_after_another_from_a_huge_page_region() -> None:
    regions = pages._Regions()
    first, second = regions.take(600), regions.take(28)
    assert first.data_ptr() % pages.HUGE_PAGE == 0
    assert second.data_ptr() - first.data_ptr() == 640  # 600 rounded up to a cache line
    small = pages.empty((100, 3), torch.float16)
    small.fill_(1)
    assert float(small.float().sum()) == 300 and huge_kib(small) >= 2048


@huge_pages_here
def test_a_large_tensor_lies_in_huge_pages_but_not_its_tail() -> None:
    out = pages.empty((3000, 1001), torch.float16)
    out.fill_(1)
    assert huge_kib(out) == 2 * 2048  # 6,006,000 bytes: the third 2 MiB would be mostly empty
    assert float(out.float().sum()) == 3000 * 1001


@huge_pages_here
def test_contiguous_copies_large_tensors_into_huge_pages() -> None:
    values = torch.arange(4 << 20, dtype=torch.int32).view(1024, -1)
    out = pages.contiguous(values.t())
    assert torch.equal(out, values.t()) and out.is_contiguous()
    assert huge_kib(out) >= 4 * 2048
    small = torch.arange(12).view(3, 4)
    copy = pages.contiguous(small.t())
    assert torch.equal(copy, small.t()) and copy.is_contiguous() and huge_kib(copy) >= 2048


@huge_pages_here
def test_a_4_bit_layers_tiles_lie_in_huge_pages() -> None:
    torch.manual_seed(0)
    layer = Int4Linear(torch.randn(2048, 4096), None, own_kernel=True)
    assert layer.codes is not None and layer.codes.numel() == 2048 * 4096 // 2
    assert huge_kib(layer.codes) >= 2048


def faulted(reserve: pages._Reserve) -> None:
    """Wait until ``reserve``'s thread has stopped."""
    deadline = time.monotonic() + 30
    while any(thread.name == "infermcp-pages" for thread in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_reserve_is_faulted_in_by_its_thread_and_cut_one_tensor_after_another() -> None:
    reserve = pages._Reserve(16 * pages.HUGE_PAGE)
    start = reserve._address + reserve._next
    try:
        faulted(reserve)
        assert mapping_kib(start, "Rss") >= 16 * 2048  # nothing written: the thread faulted it
        first, second = reserve.take(600), reserve.take(3 * pages.HUGE_PAGE)
        assert first is not None and second is not None
        assert first.data_ptr() == start and second.data_ptr() == start + 640
        assert not second.any()
    finally:
        assert reserve.close() == 640 + 3 * pages.HUGE_PAGE  # the bytes cut
    assert reserve.take(1) is None
    assert mapping_kib(start, "Rss") <= 4 * 2048  # the huge pages never cut went back
    assert float(second.fill_(1).sum()) == 3 * pages.HUGE_PAGE  # the cut ones stay


def test_the_thread_never_writes_where_a_tensor_was_cut() -> None:
    """Tensors cut and filled while the thread faults the pages in from the other end: where
    they meet, neither waits forever and no byte a tensor holds is the thread's zero."""
    reserve = pages._Reserve(64 * pages.HUGE_PAGE)
    cut = []
    try:
        while (tensor := reserve.take(pages.HUGE_PAGE // 2 + 100)) is not None:
            cut.append(tensor.fill_(255))
        faulted(reserve)
    finally:
        reserve.close()
    assert len(cut) == 127
    assert all(bool((tensor == 255).all()) for tensor in cut)


def test_empty_cuts_from_a_reserve_until_it_is_released_or_spent() -> None:
    pages.reserve(pages.HUGE_PAGE)
    try:
        reserve = pages._reserve
        assert reserve is not None
        first = pages.empty((1000,), torch.float32)
        assert first.data_ptr() == reserve._address + reserve._next - 4000
        # a huge page more than asked for: room for the cache lines between tensors, no more
        assert reserve._end - reserve._first == 2 * pages.HUGE_PAGE
        too_big = pages.empty((2 * pages.HUGE_PAGE,), torch.uint8)
        assert too_big.data_ptr() % pages.HUGE_PAGE == 0  # of its own
        pages.release()
        assert pages._reserve is None
        outside = pages.empty((1000,), torch.float32)
        assert not reserve._address <= outside.data_ptr() < reserve._address + reserve._end
    finally:
        pages.release()
