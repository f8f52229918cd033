"""The kernel benchmark: its decode step is the 1B files' (by weight count), and a short
measurement in the cache runs every kernel and reports a rate."""

from __future__ import annotations

import re

import pytest
import torch

from bench import kernel_bench
from core.models import kernels


def test_a_decode_step_holds_the_1b_shapes_weights() -> None:
    weights = {kind: sum(out * inp for out, inp in kernel_bench.step_shapes(kind))
               for kind in ("q4", "q4k", "q6", "q8")}
    # Llama-3.2-1B with a tied 49152-row table: 1,074 million weights a token
    assert weights["q4"] == weights["q8"] == weights["q4k"] + weights["q6"] == 1_073_741_824
    assert weights["q6"] == 8 * (512 * 2048 + 2048 * 8192) + 49152 * 2048


@pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the kernels need AVX2")
def test_a_measurement_in_the_cache_reports_each_kernels_rate() -> None:
    assert kernels.available()
    lines = kernel_bench.measure(rows=2, cache=True, rounds=2)
    assert [line.split(" | ")[1] for line in lines] == ["Q4_0 (q4)", "Q4_K (q4k)", "Q6_K (q6)",
                                                       "Q8_0 (q8)"]
    for line in lines:
        median, best = (float(v) for v in re.findall(r"\| ([0-9.]+) \| ([0-9.]+) \|$", line)[0])
        assert 0 < median <= best


@pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the kernels need AVX2")
def test_each_layout_is_what_its_kernel_takes() -> None:
    assert kernels.available()
    for kind in ("q4", "q4k", "q6", "q8"):
        out = kernel_bench.matmul(kind, 16, 256)(torch.randn(3, 256))
        assert out.shape == (3, 16) and bool(torch.isfinite(out).all()), kind
