"""The shared layers: with core.models.kernels turned on they compute what torch's operations do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.models import kernels, layers, quant
from core.models.attention import Attention, AttentionMetadata, ChunkContext
from core.models.layers import (
    MLP,
    PackedLinear,
    RMSNorm,
    SparseMoE,
    can_pack_linears,
    held_tensors,
    use_own_kernels,
)
from core.models.rotary import Rotary

needs_kernels = pytest.mark.skipif(not kernels.cpu_has_avx2() or not kernels.available(),
                                   reason="the kernels need AVX2, g++ and ninja")


def with_and_without_kernels(layer: nn.Module, *args: object) -> tuple[object, object]:
    outs = []
    for on in (False, True):
        use_own_kernels(layer, on)
        with torch.no_grad():
            outs.append(layer(*args))
    return outs[0], outs[1]


def test_layers_run_torchs_operations_until_turned_on() -> None:
    model = nn.ModuleList([RMSNorm(64, 1e-6), Attention(64, 4, 2, 16), MLP(64, 128)])
    assert not any(m.own_kernels for m in model.children())
    use_own_kernels(model, True)
    assert all(m.own_kernels for m in model.children())


@needs_kernels
def test_norm_and_mlp_compute_the_same_either_way() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 64) * 3
    for layer in (RMSNorm(64, 1e-5), MLP(64, 96, bias=True),
                  MLP(64, 96, act="gelu_pytorch_tanh")):  # Gemma's
        torch.nn.init.normal_(next(iter(layer.parameters())))
        torch_out, own_out = with_and_without_kernels(layer, x)
        torch.testing.assert_close(own_out, torch_out, rtol=1e-5, atol=1e-5)


def test_a_mixture_of_experts_weighs_each_tokens_chosen_experts() -> None:
    """Batched (rows gathered by expert) and one token alone (its experts in turn): each
    token's output is its top-k experts' outputs weighted by their renormalized probabilities."""
    torch.manual_seed(0)
    moe = SparseMoE(64, 96, num_experts=8, top_k=3, norm_topk_prob=True)
    for parameter in moe.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = []
        for token in x:
            weights, chosen = (token @ moe.router.T).softmax(-1).topk(3)
            weights = weights / weights.sum()
            expected.append(sum(w * moe.experts[int(e)](token[None])[0]
                                for w, e in zip(weights, chosen, strict=True)))
        want = torch.stack(expected)
        torch.testing.assert_close(moe(x), want, rtol=1e-5, atol=1e-5)
        for i in range(4):
            torch.testing.assert_close(moe(x[i:i + 1]), want[i:i + 1], rtol=1e-5, atol=1e-5)


@needs_kernels
def test_one_tokens_experts_run_in_one_call_as_they_would_one_by_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On the 4-bit kernel a token's chosen experts run as two calls for all of them: the
    same output, bit for bit, as each expert's own layers."""
    torch.manual_seed(0)
    moe = SparseMoE(256, 96, num_experts=16, top_k=4, norm_topk_prob=True)
    for parameter in moe.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    for expert in moe.experts:
        quant.quantize_linears(expert, "int4", own_kernels=True)
    use_own_kernels(moe, True)
    x = torch.randn(3, 256)
    calls: list[int] = []
    at_once = layers._experts_at_once
    monkeypatch.setattr(layers, "_experts_at_once",
                        lambda mlps, x: calls.append(len(mlps)) or at_once(mlps, x))
    with torch.no_grad():
        together = [moe(x[i:i + 1]) for i in range(3)]
        assert calls == [4, 4, 4]
        monkeypatch.setattr(layers, "_experts_at_once", lambda mlps, x: None)
        one_by_one = [moe(x[i:i + 1]) for i in range(3)]
    for got, want in zip(together, one_by_one, strict=True):
        assert torch.equal(got, want)


@needs_kernels
def test_attention_over_the_paged_cache_computes_the_same_either_way() -> None:
    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 64
    attn = Attention(128, heads, kv_heads, dim, qkv_bias=True)
    rope = Rotary(dim, max_positions=32, theta=10000.0)
    cached = torch.randn(16, 2 * kv_heads, dim)  # slots 1-6: two sequences' earlier tokens
    # a 3-token prompt (slots 10-12), then two decoding rows: 5 tokens of context and 2 (padded)
    positions = torch.tensor([0, 1, 2, 4, 1])
    gather = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]])
    meta = AttentionMetadata(torch.tensor([10, 11, 12, 5, 7]), [ChunkContext(3)],
                             gather.flatten(), (gather > 0)[:, None, None, :])
    x = torch.randn(5, 128)
    outs, caches = [], []
    for on in (False, True):
        attn.kv_cache = cached.clone()
        use_own_kernels(attn, on)
        with torch.no_grad():
            outs.append(attn(x, rope(positions, x.dtype), meta))
        caches.append(attn.kv_cache)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[1], caches[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not can_pack_linears(torch.float32, torch.device("cpu")), reason="oneDNN")
def test_a_packed_linear_computes_what_the_linear_does() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)


def test_held_tensors_are_a_modules_own_not_its_submodules() -> None:
    attn = Attention(64, 4, 2, 16)
    attn.kv_cache = torch.zeros(8, 4, 16)
    assert [t is attn.kv_cache for t in held_tensors(attn)] == [True]
    assert [t is attn.qkv_proj.weight for t in held_tensors(attn.qkv_proj)] == [True]
