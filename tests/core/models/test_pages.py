from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.models import pages
from core.models.quant import Int4Linear

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
huge_pages_here = pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")


def huge_kib(tensor: torch.Tensor) -> int:
    """KiB of huge pages in the mapping that holds ``tensor``'s first byte."""
    address, inside = tensor.data_ptr(), False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError("no mapping holds the tensor")


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
