"""M-RoPE (Qwen2-VL's multimodal rotary) rotates as transformers' Qwen2.5-VL text rotary does;
one position a token is plain rotary."""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLRotaryEmbedding,
    apply_rotary_pos_emb,
)

from core.models.rotary import RopeScaling, Rotary, apply_rope


@pytest.mark.parametrize(("head_dim", "section"), [(16, (2, 3, 3)), (128, (16, 24, 24))])
def test_mrope_rotates_as_transformers(head_dim: int, section: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 500, (3, 7), generator=gen)  # (3, num_tokens)
    x = torch.randn(7, 2, head_dim, generator=gen, dtype=torch.float64)  # (tokens, heads, dim)
    rope = Rotary(head_dim, 512, 1e6, RopeScaling(mrope_section=section))
    ours = apply_rope(x.float(), rope(positions, torch.float32))
    config = Qwen2_5_VLTextConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                         "mrope_section": list(section)})
    cos, sin = Qwen2_5_VLRotaryEmbedding(config)(x, positions.unsqueeze(1))  # (1, tokens, dim)
    # transformers takes the angles (up to 500 rad) in float32, these tables in float64
    theirs, _ = apply_rotary_pos_emb(x.transpose(0, 1).unsqueeze(0), x.transpose(0, 1)
                                     .unsqueeze(0), cos.double(), sin.double())
    torch.testing.assert_close(ours.double(), theirs[0].transpose(0, 1), atol=1e-4, rtol=0)
    exchanged = apply_rope(x.float(), rope(positions[[0, 2, 1]], torch.float32))
    assert not torch.allclose(exchanged.double(), theirs[0].transpose(0, 1), atol=1e-2)


def test_one_position_a_token_is_three_equal_ones() -> None:
    rope = Rotary(16, 64, 1e4, RopeScaling(mrope_section=(2, 3, 3)))
    positions = torch.tensor([0, 5, 63, 7])
    for flat, spatial in zip(rope(positions, torch.float32),
                             rope(positions.expand(3, -1), torch.float32), strict=True):
        assert torch.equal(flat, spatial)


def test_three_positions_need_a_section() -> None:
    with pytest.raises(ValueError, match="M-RoPE"):
        Rotary(16, 64, 1e4)(torch.zeros(3, 2, dtype=torch.long), torch.float32)
