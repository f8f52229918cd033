"""The AVX2 kernels (core/kernels) against what torch computes."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as QType
from torch import nn

from core.models import gguf, kernels, quant
from core.models.rotary import Rotary, apply_rope
from tests.core.models.gguf_quants import random_bytes
from tests.core.models.test_blocks import (
    FORMS,
    int4_blocks,
    int8_blocks,
    q4_k_blocks,
    q6_k_blocks,
)

pytestmark = pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the kernel needs AVX2")


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    assert kernels.available(), "an AVX2 CPU with g++ and ninja builds the kernel"


def quantized(out_features: int, in_features: int, bias: bool = False) -> quant.Int4Linear:
    torch.manual_seed(out_features + in_features)
    linear = nn.Linear(in_features, out_features, bias=bias)
    return quant.Int4Linear(linear.weight, linear.bias, own_kernel=True)


def test_codes_stand_for_the_weight_within_half_a_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 64)
    layer = quant.Int4Linear(weight, None, own_kernel=True)
    # one tile of 8 rows (2 of them padding), 2 blocks of 128 bytes: 64 codes a row
    assert layer.codes is not None and layer.codes.shape == (1, 2, 128)
    assert layer.codes.dtype == torch.uint8 and layer.scales.shape == (1, 2, 8)
    assert layer.block_scales().shape == (6, 2)
    step = layer.block_scales().repeat_interleave(32, dim=1)
    assert ((layer.dequantized() - weight).abs() <= step / 2 + 1e-6).all()
    # each block's smallest and largest weights are represented exactly
    blocks = weight.view(6, 2, 32)
    assert torch.allclose(layer.dequantized().view(6, 2, 32).amin(-1), blocks.amin(-1), atol=1e-6)
    assert torch.allclose(layer.dequantized().view(6, 2, 32).amax(-1), blocks.amax(-1), atol=1e-5)


def test_5_bit_codes_stand_for_the_weight_within_half_a_step() -> None:
    """int5 (llama.cpp's Q5_1): codes 0..31 with a float16 scale and minimum a block, each
    weight within half a step of its code (and the float16 rounding of the two)."""
    torch.manual_seed(0)
    weight = torch.randn(6, 64) * 3
    blocks = quant.Int8Blocks.quantize_5_bits(weight)
    assert blocks.codes.dtype == torch.int8 and blocks.codes.shape == (6, 2, 32)
    assert int(blocks.codes.min()) == 0 and int(blocks.codes.max()) == 31
    assert blocks.scales.dtype == blocks.mins.dtype == torch.float16  # type: ignore[union-attr]
    step = blocks.scales.float().repeat_interleave(32, dim=1)
    rounding = weight.abs().amax() * 2.0**-10  # of the float16 minimum and scale
    assert ((blocks.dequantize() - weight).abs() <= step / 2 + rounding).all()
    layer = quant.Int8BlockLinear(blocks, None, five_bits=True)
    assert layer.kernel == "q5" and layer.codes.shape == (1, 2, 160)
    assert torch.equal(layer.dequantized(), blocks.dequantize())


@pytest.mark.parametrize("form", ["q5_0", "q5_1", "q5_k"])
@pytest.mark.parametrize("rows", [1, 4, 9])
def test_5_bit_blocks_give_the_8_bit_kernels_very_floats(form: str, rows: int) -> None:
    """The same blocks in 5 bits a code (q5_matmul, their fifth bits beside the nibbles) and a
    byte a code (q8_matmul): bit for bit the same outputs; Q5_0's codes q - 16 go in as q."""
    blocks = int8_blocks(form, 37, 256)
    five = quant.Int8BlockLinear(blocks, None, five_bits=True)
    eight = quant.Int8BlockLinear(blocks, None)
    assert (five.kernel, eight.kernel) == ("q5", "q8")
    for name in ("codes", "scales", "mins"):
        got, want = getattr(five.blocks(), name), getattr(blocks, name)
        assert (got is None) == (want is None) and (got is None or torch.equal(got, want)), name
    torch.manual_seed(rows)
    x = torch.randn(rows, 256) * 2
    assert torch.equal(five(x), eight(x))


@pytest.mark.parametrize("rows", [1, 2, 3, 16, 40])
@pytest.mark.parametrize(("out_features", "in_features"), [(96, 128), (14, 64), (33, 96)])
def test_the_kernel_computes_x_times_the_dequantized_weight(
        rows: int, out_features: int, in_features: int) -> None:
    layer = quantized(out_features, in_features)
    x = torch.randn(rows, in_features) * 3
    assert layer.codes is not None  # any width: a partial last tile of rows is padded
    expected = x @ layer.dequantized().T
    got = torch.ops.infermcp.q4_matmul(x, layer.codes, layer.scales, layer.mins,
                                       out_features)
    assert got.shape == (rows, out_features)
    # activations go in as int8 per block of 32: about 0.5% for normally distributed ones
    assert (got - expected).norm() / expected.norm() < 1e-2


@pytest.mark.parametrize("form", ["q4_0", "q4_1", "q4_k"])
@pytest.mark.parametrize("rows", [1, 5])
def test_a_files_own_scales_run_as_they_are(form: str, rows: int) -> None:
    """float16 scales (and minimums, or none) give the very sums of their float32 values; no
    minimums (Q4_0: -8 times the scale, folded into the activations' sums) give those of the
    minimums written out, to float32 rounding."""
    blocks = int4_blocks(form, 37, 96)
    layer = quant.Int4Linear(blocks, None, own_kernel=True)
    assert layer.codes is not None and layer.scales.dtype == blocks.scales.dtype
    assert torch.equal(layer.dequantized(), blocks.dequantize())
    x = torch.randn(rows, 96)
    as_float32 = quant.Int4Blocks(blocks.packed, blocks.scales.float(),
                                  None if blocks.mins is None else blocks.mins.float())
    reference = quant.Int4Linear(as_float32, None, own_kernel=True)
    assert torch.equal(layer(x), reference(x))
    written_out = quant.Int4Linear(quant.Int4Blocks(blocks.packed, blocks.scales.float(),
                                                    blocks.full_mins().float()),
                                   None, own_kernel=True)
    torch.testing.assert_close(layer(x), written_out(x), rtol=1e-5, atol=1e-5)
    expected = x @ blocks.dequantize().T
    assert (layer(x) - expected).norm() / expected.norm() < 1e-2


@pytest.mark.parametrize("rows", [1, 4, 9])
def test_q4_k_scales_as_the_file_holds_them_give_the_very_sums_of_their_floats(
        rows: int) -> None:
    """q4k_matmul computes each block's scale and minimum from the 6-bit codes and float16
    multipliers, exactly: the same outputs, bit for bit, as the float32 layout, in fewer bytes
    (37 rows: a partial last tile)."""
    blocks = q4_k_blocks(37, 512)
    layer = quant.Int4Linear(blocks, None, own_kernel=True)
    floats = quant.Int4Linear(replace(blocks, sub_scales=None, super_scales=None), None,
                              own_kernel=True)
    assert layer.sub_scales.numel() and not layer.scales.numel()
    x = torch.randn(rows, 512)
    assert torch.equal(layer(x), floats(x))
    assert quant.weight_bytes(layer) < 0.8 * quant.weight_bytes(floats)
    back = layer.blocks()
    for name in ("packed", "scales", "mins", "sub_scales", "super_scales"):
        assert torch.equal(getattr(back, name), getattr(blocks, name)), name
    ids = torch.tensor([36, 0, 9])
    tied = quant.Int4Embedding(layer, torch.float32)
    assert torch.equal(tied(ids), blocks.dequantize()[ids])


@pytest.mark.parametrize("form", ["q4_0", "q4_1", "q4_k"])
def test_a_4_bit_embedding_reads_the_rows_exactly(form: str) -> None:
    """From the blocks, or from a tied head's tiles (37 rows: a partial last tile)."""
    blocks = int4_blocks(form, 37, 64)
    ids = torch.tensor([0, 36, 8, 7, 8, 20])
    expected = blocks.dequantize()[ids]
    assert torch.equal(quant.Int4Embedding(blocks, torch.float32)(ids), expected)
    head = quant.Int4Linear(blocks, None, own_kernel=True)
    tied = quant.Int4Embedding(head, torch.float32)
    assert tied.packed is head.codes  # one copy of the table
    assert torch.equal(tied(ids), expected)


EIGHT_BIT_FORMS = [*FORMS, "fused"]


def eight_bit(form: str, out_features: int, in_features: int) -> quant.Int8Blocks:
    """Random blocks in a GGUF type's 8-bit form, or ``fused``: a projection of Q4_K rows and
    Q6_K rows (float32, two scales a block, minimums)."""
    if form != "fused":
        return int8_blocks(form, out_features, in_features)
    top = out_features // 2
    return quant.Int8Blocks.cat([quant.Int8Blocks.from_int4(int4_blocks("q4_k", top, in_features)),
                                 int8_blocks("q6_k", out_features - top, in_features)])


def as_the_kernel_sees(x: torch.Tensor) -> torch.Tensor:
    """``x`` quantized to int8 per block of 32 as avx2.h's QuantizedRows does it (scale
    max / 127, rounded half to even), and back to floats."""
    blocks = x.view(x.shape[0], -1, 32)
    top = blocks.abs().amax(-1, keepdim=True)
    codes = torch.round(blocks * torch.where(top > 0, 127 / top, 0))
    return (codes * (top / 127)).view(x.shape)


@pytest.mark.parametrize("form", EIGHT_BIT_FORMS)
@pytest.mark.parametrize("rows", [1, 3, 4, 9])
@pytest.mark.parametrize(("out_features", "in_features"), [(96, 128), (37, 64)])
def test_the_8_bit_kernel_computes_x_times_the_files_weight(
        form: str, rows: int, out_features: int, in_features: int) -> None:
    """Every form (one or two scales a block, float16 or float32, minimums or none) gives the
    products of the file's weights with the activations as the kernel quantizes them (int8 per
    block of 32, as llama.cpp computes these types), to float32 rounding."""
    blocks = eight_bit(form, out_features, in_features)
    layer = quant.Int8BlockLinear(blocks, None)
    assert layer.scales.dtype == blocks.scales.dtype
    assert torch.equal(layer.dequantized(), blocks.dequantize())  # the tiling loses nothing
    x = torch.randn(rows, in_features) * 3
    got = layer(x)
    assert got.shape == (rows, out_features)
    exact = as_the_kernel_sees(x).double() @ blocks.dequantize().double().T
    assert (got - exact).abs().max() < 1e-5 * exact.abs().max()
    # against the float activations: about 0.5% for normally distributed ones
    plain = x @ blocks.dequantize().T
    assert (got - plain).norm() / plain.norm() < 1e-2
    # each row alone gives the very same numbers as in its batch
    assert torch.equal(torch.cat([layer(row.unsqueeze(0)) for row in x]), got)


@pytest.mark.parametrize("form", EIGHT_BIT_FORMS)
def test_an_8_bit_embedding_reads_the_rows_exactly(form: str) -> None:
    blocks = eight_bit(form, 37, 64)
    ids = torch.tensor([0, 36, 8, 8])
    got = quant.Int8Embedding(blocks, torch.float32)(ids)
    assert torch.equal(got, blocks.dequantize()[ids])


@pytest.mark.parametrize("rows", [1, 4, 9])
def test_q6_k_blocks_in_six_bits_give_the_8_bit_kernels_very_floats(rows: int) -> None:
    """q6_matmul reads a Q6_K file's codes in 6 bits with its 8-bit scales and float16
    multipliers, and gives, bit for bit, what q8_matmul gives from a byte a code and float32
    scales, in two thirds of the bytes (37 rows: a partial last tile)."""
    blocks = q6_k_blocks(37, 512)
    six = quant.Int8BlockLinear(blocks, None)
    eight = quant.Int8BlockLinear(quant.Int8Blocks(blocks.codes, blocks.scales), None)
    assert six.codes.shape == (5, 16, 192) and six.super_scales.numel()
    assert not eight.super_scales.numel()
    assert quant.weight_bytes(six) < 0.7 * quant.weight_bytes(eight)
    x = torch.randn(rows, 512) * 3
    assert torch.equal(six(x), eight(x))
    back = six.blocks()
    for name in ("codes", "scales", "sub_scales", "super_scales"):
        assert torch.equal(getattr(back, name), getattr(blocks, name)), name
    ids = torch.tensor([36, 0, 9, 9])
    tied = quant.Int8Embedding(six, torch.float32)
    assert tied.codes is six.codes  # one copy of the table
    assert torch.equal(tied(ids), blocks.dequantize()[ids])


def test_a_projection_of_4_and_6_bit_parts_runs_each_on_its_kernel() -> None:
    """A Q4_K_M's 4-bit query and key beside its 6-bit value: a layer for each, their outputs
    side by side, plus the fused bias; the same as each part alone."""
    four, six = q4_k_blocks(24, 512), q6_k_blocks(13, 512)
    bias = torch.randn(37)
    layer = quant.build_linear(quant.MixedBlocks((four, six)), bias, "int4", own_kernels=True,
                               dtype=torch.float32, as_filed=True)
    assert isinstance(layer, quant.PartsLinear)
    x = torch.randn(3, 512)
    alone = [quant.Int4Linear(four, None, own_kernel=True), quant.Int8BlockLinear(six, None)]
    assert torch.equal(layer(x), torch.cat([part(x) for part in alone], dim=-1) + bias)
    # not as filed, under int8: one 8-bit layer of the same floats
    merged = quant.build_linear(quant.MixedBlocks((four, six)), None, "int8", own_kernels=True,
                                dtype=torch.float32)
    assert isinstance(merged, quant.Int8BlockLinear)
    assert torch.equal(merged.dequantized(), torch.cat([four.dequantize(), six.dequantize()]))


def test_bad_6_bit_blocks_are_refused_not_read_out_of_bounds() -> None:
    layer = quant.Int8BlockLinear(q6_k_blocks(16, 512), None)
    x, q6_matmul = torch.randn(1, 512), torch.ops.infermcp.q6_matmul
    with pytest.raises(RuntimeError, match="super"):
        q6_matmul(x, layer.codes, layer.scales, layer.super_scales[:1], 16)
    with pytest.raises(RuntimeError, match="sub"):
        q6_matmul(x, layer.codes, layer.scales.float(), layer.super_scales, 16)
    with pytest.raises(RuntimeError, match="codes"):  # more rows than the tiles hold
        q6_matmul(x, layer.codes, layer.scales, layer.super_scales, 24)
    with pytest.raises(RuntimeError, match="256"):
        q6_matmul(torch.randn(1, 480), layer.codes, layer.scales, layer.super_scales, 16)


def test_bad_8_bit_blocks_are_refused_not_read_out_of_bounds() -> None:
    layer = quant.Int8BlockLinear(eight_bit("q5_k", 64, 128), None)
    x, q8_matmul = torch.randn(1, 128), torch.ops.infermcp.q8_matmul
    with pytest.raises(RuntimeError, match="mins"):
        q8_matmul(x, layer.codes, layer.scales, layer.mins[:1], 64)
    with pytest.raises(RuntimeError, match="mins"):  # not the scales' type
        q8_matmul(x, layer.codes, layer.scales, layer.mins.half(), 64)
    with pytest.raises(RuntimeError, match="scales"):  # three a block
        q8_matmul(x, layer.codes, layer.scales.repeat(1, 3, 1), layer.mins, 64)
    with pytest.raises(RuntimeError, match="codes"):  # more rows than the tiles hold
        q8_matmul(x, layer.codes, layer.scales, layer.mins, 72)


def kernel_layer(kernel: str, out_features: int) -> nn.Module:
    """A layer of random weights (256 inputs) that runs on the named integer kernel."""
    return {
        "q4": lambda: quantized(out_features, 256),
        "q4k": lambda: quant.Int4Linear(q4_k_blocks(out_features, 256), None, own_kernel=True),
        "q5": lambda: quant.Int8BlockLinear(int8_blocks("q5_k", out_features, 256), None,
                                             five_bits=True),
        "q6": lambda: quant.Int8BlockLinear(q6_k_blocks(out_features, 256), None),
        "q8": lambda: quant.Int8BlockLinear(eight_bit("q8_0", out_features, 256), None),
    }[kernel]()


@pytest.mark.parametrize("kernel", ["q4", "q4k", "q5", "q6", "q8"])
def test_each_row_is_computed_independently_of_its_neighbours(kernel: str) -> None:
    """13 rows go through a tile as 8 (4 without AVX-512), 4 and 1 at a time: each row gets
    the very floats it gets alone, whatever its neighbours (a sequence's tokens do not depend
    on the batch it decodes in)."""
    layer = kernel_layer(kernel, 64)
    assert getattr(layer, "kernel", kernel) == kernel
    x = torch.randn(13, 256) * 2
    alone = torch.cat([layer(row.unsqueeze(0)) for row in x])
    assert torch.equal(layer(x), alone)
    assert torch.equal(layer(x[:9]), alone[:9])


@pytest.mark.parametrize("kernel", ["q4", "q4k", "q6", "q8"])
@pytest.mark.parametrize("rows", [1, 16])
def test_the_threads_split_the_tiles_into_what_one_thread_computes(kernel: str,
                                                                    rows: int) -> None:
    """Each thread takes its share of the tiles, then what is left of the others': every tile
    computed once, whichever thread is faster, into the very floats one thread gives (203
    tiles, the last partial, over 2, 3 and 5 threads)."""
    layer = kernel_layer(kernel, 8 * 202 + 5)
    x = torch.randn(rows, 256)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = layer(x)
        for threads in (2, 3, 5):
            torch.set_num_threads(threads)
            for _ in range(3):
                assert torch.equal(layer(x), alone), threads
    finally:
        torch.set_num_threads(before)
    assert (alone - x @ layer.dequantized().T).norm() < 1e-2 * alone.norm()


def test_long_prompt_chunks_run_through_the_kernel_too() -> None:
    layer = quantized(64, 128, bias=True)
    x = torch.randn(300, 128)
    expected = nn.functional.linear(x, layer.dequantized(), layer.bias)
    got = layer(x)
    assert got.shape == (300, 64)
    assert (got - expected).norm() / expected.norm() < 1e-2
    torch.testing.assert_close(got[-3:], layer(x[-3:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["q4_0", "q4_1", "q4_f32", "q4_k"])
def test_experts_in_one_call_compute_as_each_alone(form: str) -> None:
    """q4_matmul_experts / q4k_matmul_experts: row e of the activations through expert e,
    bit for bit what each expert's layer gives alone (a mixture's chosen experts for a token)."""
    base = q4_k_blocks(40, 512) if form == "q4_k" else int4_blocks(form, 40, 512)
    torch.manual_seed(1)
    experts = [quant.Int4Linear(base.rows(torch.randperm(40)), None, own_kernel=True)
               for _ in range(5)]  # 40 rows: a last tile of 8, whole
    assert quant.experts_alike(experts)
    x = torch.randn(5, 512) * 3
    together = quant.experts_forward(experts, x)
    assert together.shape == (5, 40)
    for e, expert in enumerate(experts):
        assert torch.equal(together[e:e + 1], expert(x[e:e + 1])), e


def test_experts_of_different_forms_are_not_run_together() -> None:
    q4_0, q4_1 = (quant.Int4Linear(int4_blocks(form, 16, 256), None, own_kernel=True)
                  for form in ("q4_0", "q4_1"))
    q4_k = quant.Int4Linear(q4_k_blocks(16, 256), None, own_kernel=True)
    wider = quant.Int4Linear(int4_blocks("q4_0", 24, 256), None, own_kernel=True)
    assert quant.experts_alike([q4_0, q4_0])
    for pair in ([q4_0, q4_1], [q4_0, q4_k], [q4_0, wider], [q4_0, nn.Linear(256, 16)]):
        assert not quant.experts_alike(pair)
    with pytest.raises(RuntimeError, match="one tensor a row"):
        torch.ops.infermcp.q4_matmul_experts(torch.randn(3, 256), [q4_0.codes] * 2,
                                             [q4_0.scales] * 2, [q4_0.mins] * 2, 16)
    with pytest.raises(RuntimeError, match="one type"):
        torch.ops.infermcp.q4_matmul_experts(torch.randn(2, 256), [q4_0.codes, q4_1.codes],
                                             [q4_0.scales, q4_1.scales],
                                             [q4_0.mins, q4_1.mins], 16)


def test_bad_shapes_are_refused_not_read_out_of_bounds() -> None:
    layer = quantized(64, 128)
    assert layer.codes is not None
    with pytest.raises(RuntimeError, match="multiple of 32"):
        torch.ops.infermcp.q4_matmul(torch.randn(1, 100), layer.codes, layer.scales, layer.mins,
                                     64)
    with pytest.raises(RuntimeError, match="mins"):
        torch.ops.infermcp.q4_matmul(torch.randn(1, 128), layer.codes, layer.scales,
                                     layer.mins[:1], 64)
    with pytest.raises(RuntimeError, match="packed"):  # more rows than the tiles hold
        torch.ops.infermcp.q4_matmul(torch.randn(1, 128), layer.codes, layer.scales, layer.mins,
                                     72)


def test_without_the_kernel_torchs_4_bit_kernel_takes_over() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 96, bias=True)
    layer = quant.Int4Linear(linear.weight, linear.bias, own_kernel=False)
    assert layer.codes is None
    x = torch.randn(3, 128)
    with torch.no_grad():
        expected = linear(x)
    assert (layer(x) - expected).norm() / expected.norm() < 0.15


def reference_attention(q: torch.Tensor, cache: torch.Tensor, index: torch.Tensor,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """torch's path: gather each row's context, then SDPA with grouped query heads."""
    rows, heads, dim = q.shape
    kv_heads = cache.shape[1] // 2
    context = cache.index_select(0, index).view(rows, -1, 2 * kv_heads, dim)
    keys = context[:, :, :kv_heads].transpose(1, 2)
    values = context[:, :, kv_heads:].transpose(1, 2)
    out = nn.functional.scaled_dot_product_attention(
        q.view(rows, kv_heads, heads // kv_heads, dim), keys, values, attn_mask=mask)
    return out.view(rows, heads, dim)


# groups of 3, 1, 4 (Llama 3.2 1B's), 5 and 7 query heads a KV head (the kernel takes them 4 at
# a time), and Gemma 3's 256-wide heads
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 64), (32, 8, 64),
                                                       (10, 2, 64), (14, 2, 128), (4, 1, 256)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_decode_attention_matches_gather_and_sdpa(heads: int, kv_heads: int, dim: int,
                                                  padded: bool, cache_dtype: torch.dtype
                                                  ) -> None:
    """A float16 cache's values are widened exactly: the sums are float32's over them."""
    torch.manual_seed(heads + dim)
    rows, max_len, slots = 5, 37, 300
    cache = (torch.randn(slots, 2 * kv_heads, dim) * 2).to(cache_dtype)
    q = torch.randn(rows, heads, dim)
    index = torch.randperm(slots)[:rows * max_len]
    mask = None
    if padded:
        lengths = torch.tensor([37, 1, 20, 36, 5])
        keep = torch.arange(max_len) < lengths.unsqueeze(1)
        index = torch.where(keep.flatten(), index, 0)  # padding reads the null slot
        mask = keep[:, None, None, :]
    got = torch.ops.infermcp.decode_attention(q, cache, index, mask, dim ** -0.5)
    torch.testing.assert_close(got, reference_attention(q, cache.float(), index, mask),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 29])
def test_decode_attention_of_a_row_does_not_depend_on_its_batch(length: int) -> None:
    """Bit for bit: a padded row sums its softmax as it would alone (the 4-bit kernel's int8
    activations would turn a last-bit difference into another token)."""
    torch.manual_seed(length)
    cache, q = torch.randn(100, 4, 64), torch.randn(2, 4, 64)
    slots = torch.randperm(99)[:2 * 40] + 1
    alone = torch.ops.infermcp.decode_attention(q[:1], cache, slots[:length], None, 0.125)
    keep = torch.arange(40) < torch.tensor([[length], [40]])
    index = torch.where(keep, slots.view(2, 40), 0).flatten()
    index[:length] = slots[:length]
    batched = torch.ops.infermcp.decode_attention(q, cache, index, keep[:, None, None, :], 0.125)
    assert torch.equal(batched[:1], alone)


@pytest.mark.parametrize("dim", [64, 128])
def test_decode_attention_of_a_head_does_not_depend_on_its_group(dim: int) -> None:
    """Bit for bit: a query head computes with the heads that share its KV head (taken 4 at a
    time, then the rest) what it computes alone over that KV head."""
    torch.manual_seed(dim)
    heads, kv_heads, rows, max_len = 14, 2, 3, 30
    cache = torch.randn(200, 2 * kv_heads, dim).half()
    q = torch.randn(rows, heads, dim)
    keep = torch.arange(max_len) < torch.tensor([[30], [11], [29]])
    index = torch.where(keep, torch.randperm(199)[:rows * max_len].view(rows, -1) + 1, 0).flatten()
    mask = keep[:, None, None, :]
    got = torch.ops.infermcp.decode_attention(q, cache, index, mask, dim ** -0.5)
    group = heads // kv_heads
    for h in range(heads):
        g = h // group
        alone = torch.ops.infermcp.decode_attention(
            q[:, h:h + 1].contiguous(), cache[:, [g, kv_heads + g]].contiguous(), index, mask,
            dim ** -0.5)
        assert torch.equal(got[:, h], alone[:, 0]), h


def test_decode_attention_refuses_slots_outside_the_cache() -> None:
    cache, q = torch.randn(10, 6, 64), torch.randn(1, 9, 64)
    with pytest.raises(RuntimeError, match="out of the cache's range"):
        torch.ops.infermcp.decode_attention(q, cache, torch.tensor([3, 10]), None, 0.125)
    with pytest.raises(RuntimeError, match="float32 or float16"):
        torch.ops.infermcp.decode_attention(q, cache.bfloat16(), torch.tensor([3]), None, 0.125)


@pytest.mark.parametrize("shape", [(1, 576), (7, 64), (3, 13)])
def test_rms_norm_matches_torch(shape: tuple[int, int]) -> None:
    torch.manual_seed(shape[1])
    x, weight = torch.randn(shape) * 4, torch.randn(shape[1])
    torch.testing.assert_close(torch.ops.infermcp.rms_norm(x, weight, 1e-5),
                               nn.functional.rms_norm(x, (shape[1],), weight, 1e-5))


def test_rms_norm_normalizes_each_head_of_a_strided_view() -> None:
    """The query heads of a fused (tokens, heads + 2 kv_heads, head_dim) projection, a view
    whose tokens lie apart: each head's row normalized, out in the view's shape."""
    torch.manual_seed(0)
    qkv, weight = torch.randn(5, 4 + 2, 256) * 3, torch.randn(256)
    queries = qkv[:, :4]
    assert not queries.is_contiguous()
    got = torch.ops.infermcp.rms_norm(queries, weight, 1e-6)
    assert got.shape == (5, 4, 256)
    torch.testing.assert_close(got, nn.functional.rms_norm(queries, (256,), weight, 1e-6))


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 2, 128), (2, 1, 12),
                                                       (2, 1, 10)])  # a slot of 20: 8, 8, 4
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_rope_and_cache_rotates_in_place_and_writes_the_slots(heads: int, kv_heads: int,
                                                               dim: int, cache_dtype: torch.dtype
                                                               ) -> None:
    """Into a float16 cache the keys and values go rounded as torch rounds them, to the bit."""
    torch.manual_seed(heads + dim)
    tokens, slots = 6, 50
    rope = Rotary(dim, max_positions=64, theta=10000.0)(torch.tensor([0, 1, 2, 40, 7, 63]),
                                                       torch.float32)
    qkv = torch.randn(tokens, heads + 2 * kv_heads, dim)
    cache = torch.randn(slots, 2 * kv_heads, dim).to(cache_dtype)
    slot_mapping = torch.tensor([3, 4, 5, 49, 0, 17])
    expected, expected_cache = qkv.clone(), cache.clone()
    qk = expected[:, :heads + kv_heads]
    apply_rope(qk, rope, out=qk)
    expected_cache.index_copy_(0, slot_mapping, expected[:, heads:].to(cache_dtype))
    torch.ops.infermcp.rope_and_cache(qkv, rope[0], rope[1], slot_mapping, cache, heads)
    torch.testing.assert_close(qkv, expected)
    if cache_dtype == torch.float16:
        assert torch.equal(cache, expected_cache)
    torch.testing.assert_close(cache, expected_cache)  # the other slots untouched


def test_rope_and_cache_refuses_slots_outside_the_cache() -> None:
    qkv, cache = torch.randn(2, 15, 64), torch.randn(10, 6, 64)
    cos = sin = torch.ones(2, 1, 64)
    with pytest.raises(RuntimeError, match="out of the cache's range"):
        torch.ops.infermcp.rope_and_cache(qkv, cos, sin, torch.tensor([1, 10]), cache, 9)
    with pytest.raises(RuntimeError, match="heads"):
        torch.ops.infermcp.rope_and_cache(qkv, cos, sin, torch.tensor([1, 2]), cache, 8)
    with pytest.raises(RuntimeError, match="float32 or float16"):
        torch.ops.infermcp.rope_and_cache(qkv, cos, sin, torch.tensor([1, 2]), cache.bfloat16(),
                                          9)


@pytest.mark.parametrize("shape", [(1, 3072), (5, 26), (2, 2)])
def test_silu_mul_matches_torch(shape: tuple[int, int]) -> None:
    torch.manual_seed(shape[1])
    gate_up = torch.randn(shape) * 6  # far into both tails of the sigmoid
    gate, up = gate_up.split(shape[1] // 2, dim=-1)
    torch.testing.assert_close(torch.ops.infermcp.silu_mul(gate_up),
                               nn.functional.silu(gate) * up, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 13824), (5, 26), (2, 2)])
def test_gelu_tanh_mul_matches_torch(shape: tuple[int, int]) -> None:
    """Gemma's gated MLP: tanh-approximated gelu(gate) * up, computed as gate * sigmoid(2u)."""
    torch.manual_seed(shape[1])
    gate_up = torch.randn(shape) * 6
    gate_up[0, 0] = -30.0  # where e^-z overflows the clamp: 0, not nan
    gate, up = gate_up.split(shape[1] // 2, dim=-1)
    expected = nn.functional.gelu(gate, approximate="tanh") * up
    got = torch.ops.infermcp.gelu_tanh_mul(gate_up)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_build_lock_left_behind_is_removed_by_whoever_holds_ours(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / kernels.TORCH_LOCK).touch()
    fd = kernels.lock_build(tmp_path, timeout=0)
    assert fd is not None
    try:
        with caplog.at_level(logging.WARNING, logger=kernels.__name__):
            assert kernels.remove_stale_lock(tmp_path)
        assert not kernels.remove_stale_lock(tmp_path)  # nothing left to remove
    finally:
        os.close(fd)
    assert not (tmp_path / kernels.TORCH_LOCK).exists()
    assert "removing the stale build lock" in caplog.text


def test_a_live_build_is_waited_for_within_the_bound(tmp_path: Path) -> None:
    held = kernels.lock_build(tmp_path, timeout=0)
    assert held is not None
    try:
        started = time.monotonic()
        assert kernels.lock_build(tmp_path, timeout=0.3) is None
        assert 0.3 <= time.monotonic() - started < 2
    finally:
        os.close(held)
    fd = kernels.lock_build(tmp_path, timeout=0)  # released with its descriptor
    assert fd is not None
    os.close(fd)


def test_a_killed_builder_leaves_no_lock_of_ours(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp_path / kernels.OWN_LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert kernels.lock_build(tmp_path, timeout=0) is None
    finally:
        holder.kill()
        holder.wait()
    fd = kernels.lock_build(tmp_path, timeout=5)
    assert fd is not None
    os.close(fd)


@pytest.mark.e2e  # a process of its own loads torch and a whole model
def test_a_start_after_a_killed_build_loads_the_kernels(tmp_path: Path) -> None:
    """torch's builder would wait for its lock file forever; a fresh process removes it, lets
    ninja finish what is missing (here nothing: a copy of the built directory) and loads."""
    built = kernels.build_dir()
    build = tmp_path / "kernels" / built.name
    shutil.copytree(built, build, ignore=shutil.ignore_patterns(kernels.TORCH_LOCK,
                                                                 kernels.OWN_LOCK))
    (build / kernels.TORCH_LOCK).touch()
    script = ("import logging; logging.basicConfig(level=logging.INFO)\n"
              "from core.models import kernels; print(kernels.available())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"INFERMCP_CACHE_DIR": str(tmp_path)},
                          cwd=Path(__file__).parents[3])
    assert done.stdout.strip() == "True", done.stderr
    assert "removing the stale build lock" in done.stderr
    assert not (build / kernels.TORCH_LOCK).exists()


def integer_matmuls() -> dict[str, torch.Tensor]:
    """Every integer matmul form of the kernels on the same 21 rows (five groups of four and a
    row alone), extreme codes included."""
    torch.manual_seed(5)
    x = torch.randn(21, 512) * 4
    x[0, :32] = 100.0  # a block at the activations' full scale
    layers: dict[str, nn.Module] = {
        form: quant.Int4Linear(int4_blocks(form, 24, 512), None, own_kernel=True)
        for form in ("q4_0", "q4_1", "q4_f32")}
    layers["q4_k"] = quant.Int4Linear(q4_k_blocks(24, 512), None, own_kernel=True)
    layers |= {form: quant.Int8BlockLinear(int8_blocks(form, 24, 512), None) for form in FORMS}
    layers["q6_k six bits"] = quant.Int8BlockLinear(q6_k_blocks(24, 512), None)
    for qtype in (QType.Q5_0, QType.Q5_1, QType.Q5_K):  # every bit pattern of codes
        tiles = gguf._tiles(qtype.name, [random_bytes(qtype, rows=24)], [None], (24, 512))
        layers[f"{qtype.name} five bits"] = quant.Int8BlockLinear(tiles, None)
    return {name: layer(x) for name, layer in layers.items()}


@pytest.mark.e2e  # a process of its own builds the kernels for AVX2 alone (a minute, once)
@pytest.mark.skipif(not set(kernels.AVX512_VNNI) <= kernels.cpu_flags(),
                    reason="without AVX-512 VNNI the AVX2 build is the one under test already")
def test_the_avx2_build_gives_the_vnni_builds_very_floats(tmp_path: Path) -> None:
    """The kernels built here use AVX-512 VNNI; a CPU without it runs their AVX2 form, which
    must compute the same integer sums, hence the same floats, bit for bit."""
    assert "-mavx512vnni" in kernels.FLAGS
    out = tmp_path / "avx2.pt"
    script = ("import sys, torch\n"
              "from core.models import kernels\n"
              "kernels.FLAGS = kernels.compiler_flags(frozenset())\n"
              "assert kernels.available()\n"
              "from tests.core.models.test_kernels import integer_matmuls\n"
              "torch.save(integer_matmuls(), sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    avx2, vnni = torch.load(out), integer_matmuls()
    assert avx2.keys() == vnni.keys()
    for name in vnni:
        assert torch.equal(avx2[name], vnni[name]), name


def test_avx_512_vnni_is_built_for_where_the_cpu_has_it() -> None:
    avx2 = frozenset({"avx2", "fma", "f16c"})
    assert "-mavx512vnni" not in kernels.compiler_flags(avx2)
    assert "-mavx512vnni" in kernels.compiler_flags(avx2 | set(kernels.AVX512_VNNI))
    assert "-mavx512vnni" not in kernels.compiler_flags(avx2 | {"avx512f", "avx512_vnni"})
