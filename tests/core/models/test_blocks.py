"""The block layouts: every 8-bit form, 4-bit blocks in the 8-bit form and fused projections of
different forms, each the same floats as its parts."""

from __future__ import annotations

import pytest
import torch

from core.models.blocks import Int4Blocks, Int8Blocks

# form: (lowest code, highest code, scales' type, scales a block, whether it has minimums)
FORMS: dict[str, tuple[int, int, torch.dtype, int, bool]] = {
    "q8_0": (-128, 127, torch.float16, 1, False), "q5_0": (-16, 15, torch.float16, 1, False),
    "q5_1": (0, 31, torch.float16, 1, True), "q5_k": (0, 31, torch.float32, 1, True),
    "q6_k": (-32, 31, torch.float32, 2, False),
}


def int8_blocks(form: str, out_features: int, in_features: int) -> Int8Blocks:
    """Random blocks in a GGUF type's 8-bit form (:data:`FORMS`)."""
    low, high, dtype, per, has_mins = FORMS[form]
    torch.manual_seed(out_features + 7 * in_features + len(form))
    blocks = in_features // 32
    codes = torch.randint(low, high + 1, (out_features, blocks, 32), dtype=torch.int8)
    scales = (torch.rand(out_features, blocks * per) / 50).to(dtype)
    mins = (-torch.rand(out_features, blocks) / 3).to(dtype) if has_mins else None
    return Int8Blocks(codes, scales, mins)


def int4_blocks(form: str, out_features: int, in_features: int) -> Int4Blocks:
    """Random 4-bit blocks as a Q4_0 (float16 scales, no minimums), Q4_1 (float16 scales and
    minimums) or Q4_K (float32 ones) file holds them."""
    torch.manual_seed(out_features * in_features)
    codes = torch.randint(0, 16, (out_features, in_features // 32, 32), dtype=torch.uint8)
    scales, mins = torch.rand(out_features, in_features // 32) / 10, -torch.rand(
        out_features, in_features // 32)
    if form == "q4_0":
        return Int4Blocks.from_codes(codes, scales.half(), None)
    if form == "q4_1":
        return Int4Blocks.from_codes(codes, scales.half(), mins.half())
    return Int4Blocks.from_codes(codes, scales, mins)


def q4_k_blocks(out_features: int, in_features: int) -> Int4Blocks:
    """Random 4-bit blocks with a Q4_K file's scales as it holds them (6-bit codes, float16
    super-block multipliers) beside their float32 products, as the decoder gives them."""
    torch.manual_seed(out_features + in_features)
    codes = torch.randint(0, 16, (out_features, in_features // 32, 32), dtype=torch.uint8)
    sub = torch.randint(0, 64, (out_features, in_features // 32, 2), dtype=torch.uint8)
    sup = (torch.rand(out_features, in_features // 256, 2) / 50).half()
    d, dmin = sup.float().repeat_interleave(8, dim=1).unbind(-1)
    sc, m = sub.float().unbind(-1)
    flat = Int4Blocks.from_codes(codes, d * sc, -(dmin * m))
    return Int4Blocks(flat.packed, flat.scales, flat.mins, sub, sup)


def q6_k_blocks(out_features: int, in_features: int) -> Int8Blocks:
    """Random 6-bit blocks with a Q6_K file's scales as it holds them (signed 8-bit sc a 16,
    float16 d a 256) beside their float32 products, as the decoder gives them."""
    torch.manual_seed(out_features + 3 * in_features)
    codes = torch.randint(-32, 32, (out_features, in_features // 32, 32), dtype=torch.int8)
    sub = torch.randint(-128, 128, (out_features, in_features // 16), dtype=torch.int8)
    sup = (torch.randn(out_features, in_features // 256) / 100).half()
    scales = sup.float().repeat_interleave(16, dim=1) * sub.float()
    return Int8Blocks(codes, scales, None, sub, sup)


def test_q6_k_scale_codes_follow_their_rows() -> None:
    blocks = q6_k_blocks(9, 512)
    index = torch.tensor([8, 0, 3])
    picked = blocks.rows(index)
    assert picked.six_bits and torch.equal(picked.sub_scales,  # type: ignore[arg-type]
                                           blocks.sub_scales[index])  # type: ignore[index]
    assert Int8Blocks.cat([blocks, picked]).six_bits
    mixed = Int8Blocks.cat([blocks, int8_blocks("q6_k", 3, 512)])  # floats only: floats
    assert not mixed.six_bits
    assert torch.equal(mixed.dequantize()[:9], blocks.dequantize())


def test_q4_k_scale_codes_follow_their_rows() -> None:
    blocks = q4_k_blocks(9, 512)
    index = torch.tensor([8, 0, 3])
    picked = blocks.rows(index)
    assert picked.sub_scales is not None and picked.super_scales is not None
    assert torch.equal(picked.sub_scales, blocks.sub_scales[index])  # type: ignore[index]
    both = Int4Blocks.cat([blocks, picked])
    assert both.sub_scales is not None and both.sub_scales.shape == (12, 16, 2)
    plain = Int4Blocks.cat([blocks, int4_blocks("q4_k", 3, 512)])  # floats only: floats
    assert plain.sub_scales is None and plain.super_scales is None
    assert torch.equal(plain.dequantize()[:9], blocks.dequantize())


@pytest.mark.parametrize("form", FORMS)
def test_each_form_dequantizes_as_code_times_its_scale_plus_its_minimum(form: str) -> None:
    blocks = int8_blocks(form, 5, 64)
    per = blocks.scales_per_block
    assert per == FORMS[form][3] and blocks.shape == (5, 64)
    scales = blocks.scales.float().repeat_interleave(32 // per, dim=1)
    mins = blocks.full_mins().float().repeat_interleave(32, dim=1)
    expected = blocks.codes.reshape(5, 64).double() * scales.double() + mins.double()
    assert torch.allclose(blocks.dequantize().double(), expected, rtol=1e-6, atol=1e-7)
    index = torch.tensor([4, 0, 4])
    assert torch.equal(blocks.rows(index).dequantize(), blocks.dequantize()[index])


@pytest.mark.parametrize("form", ["q4_0", "q4_1", "q4_k"])
def test_4_bit_blocks_in_the_8_bit_form_are_the_same_floats(form: str) -> None:
    four = int4_blocks(form, 9, 96)
    eight = Int8Blocks.from_int4(four)
    assert eight.codes.dtype == torch.int8 and eight.scales.dtype == four.scales.dtype
    assert (eight.mins is None) == (form == "q4_0")  # Q4_0: codes q - 8, Q8_0's form
    assert torch.equal(eight.dequantize(), four.dequantize())


def test_a_fused_projection_of_different_forms_is_its_parts_exactly() -> None:
    """A Q4_K_M's Q4_K query and key with its Q6_K value, or Q5_0 beside Q5_1: the parts meet
    in the widest form (float32, two scales a block, minimums) without changing a float."""
    parts = [Int8Blocks.from_int4(int4_blocks("q4_k", 8, 64)), int8_blocks("q6_k", 3, 64),
             int8_blocks("q5_0", 2, 64), int8_blocks("q5_1", 4, 64)]
    fused = Int8Blocks.cat(parts)
    assert fused.scales.dtype == torch.float32 and fused.scales_per_block == 2
    assert fused.mins is not None and fused.shape == (17, 64)
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
    same = Int8Blocks.cat([int8_blocks("q5_0", 2, 64), int8_blocks("q8_0", 3, 64)])
    assert same.scales.dtype == torch.float16 and same.mins is None  # alike: as they are
