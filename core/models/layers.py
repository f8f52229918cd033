"""The layers the model families share, over a paged KV cache.

A forward pass takes a flat batch of tokens: chunks of prompts laid end to end, then one token
per decoding sequence, all in one pass. Attention reads and writes the paged cache through the
:class:`AttentionMetadata` the model runner builds. On the CPU in float32 the layers run
:mod:`core.models.kernels`' operations once :func:`use_own_kernels` turns them on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ChunkContext:
    """What one multi-token chunk of a prompt attends to. Without ``slots`` the chunk is the
    sequence's whole context so far (plain causal attention over its own keys); with them, the
    chunk continues a cached prefix and reads ``slots`` under ``mask``."""

    num_tokens: int
    slots: torch.Tensor | None = None  # (context_len,) cache slots, prefix then chunk
    mask: torch.Tensor | None = None  # (num_tokens, context_len) True = attend


@dataclass
class AttentionMetadata:
    """Where this step's keys/values go and which cached ones each query reads.

    The step's tokens are laid out as the ``chunks`` (several tokens of one sequence each), then
    one-token rows (decoding sequences) that read their context through ``gather_index``.
    """

    slot_mapping: torch.Tensor  # (num_tokens,) flat cache slot of each new token
    chunks: list[ChunkContext]
    gather_index: torch.Tensor | None = None  # rows: (num_rows * max_len,) cache slots to read
    # rows: (num_rows, 1, 1, max_len) True = attend; None when every row reads max_len slots
    attn_mask: torch.Tensor | None = None

    @property
    def num_chunk_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


def _linear_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                      ) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


# Scripted, so that a decode-graph trace (core.engine.decode_graph) records one call to it: the
# tracer cannot record the op's empty list of scalars itself.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's, see core.engine.decode_graph
    linear_pointwise = torch.jit.script(_linear_pointwise)


class PackedLinear(nn.Module):
    """A linear layer whose weight oneDNN has re-laid out for small-batch CPU matmuls.

    On this class of CPU it runs about twice as fast as the default BLAS path for decode-sized
    batches, and each row's result does not depend on the batch size.
    """

    def __init__(self, linear: nn.Linear, batch_hint: int = 16) -> None:
        super().__init__()
        self.out_features = linear.out_features
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = linear_pointwise(x, self.weight, self.bias)
        return out


def held_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors ``module`` itself holds: parameters, buffers, and plain attributes such as a
    layer's slice of the KV cache (not its submodules')."""
    values = [*module._parameters.values(), *module._buffers.values(), *vars(module).values()]
    return [v for v in values if isinstance(v, torch.Tensor)]


def can_pack_linears(dtype: torch.dtype, device: torch.device) -> bool:
    """Packing applies to float32 on the CPU when this torch build has the oneDNN ops."""
    return (device.type == "cpu" and dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack_linears(module: nn.Module) -> None:
    """Replace every ``nn.Linear`` inside ``module`` with a :class:`PackedLinear`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child))
        else:
            pack_linears(child)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, over the last dimension."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.own_kernels = False  # see use_own_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.own_kernels and x.dim() == 2:
            out: torch.Tensor = torch.ops.infermcp.rms_norm(x, self.weight, self.eps)
            return out
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


@dataclass(frozen=True)
class RopeScaling:
    """How a checkpoint stretches its rotary frequencies past its training context.

    - ``default``: none;
    - ``linear``: every frequency divided by ``factor`` (positions interpolated);
    - ``llama3`` (Llama 3.1-3.3): frequencies whose wavelength exceeds the original context
      over ``low_freq_factor`` divided by ``factor``, those under it over ``high_freq_factor``
      kept, and the band between blended smoothly;
    - a GGUF's ``rope_freqs`` tensor (llama.cpp bakes llama3 scaling into it): each frequency
      divided by its own factor (``freq_factors``).
    """

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192
    freq_factors: tuple[float, ...] = ()

    def inv_freq(self, head_dim: int, theta: float) -> torch.Tensor:
        """(head_dim / 2,) float64 inverse frequencies."""
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64)
                                    / head_dim))
        if self.freq_factors:
            return inv_freq / torch.tensor(self.freq_factors, dtype=torch.float64)
        if self.kind == "linear":
            return inv_freq / self.factor
        if self.kind != "llama3":
            return inv_freq
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = self.original_max_positions / self.low_freq_factor
        high_wavelen = self.original_max_positions / self.high_freq_factor
        scaled = torch.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (self.original_max_positions / wavelen - self.low_freq_factor) \
            / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)


class Rotary(nn.Module):
    """Rotary position embedding in the rotate-half layout Hugging Face checkpoints use.

    rotate_half(x) = cat(-x2, x1) is computed as roll(x, half) times a sine table whose first
    half is negated: two multiplies and a roll per step for queries and keys together.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float,
                 scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.head_dim, self.max_positions = head_dim, max_positions
        self.theta, self.scaling = theta, scaling or RopeScaling()
        self.cos: torch.Tensor
        self.sin: torch.Tensor  # first half negated
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.build()

    def build(self) -> None:
        """Compute the cos/sin tables."""
        inv_freq = self.scaling.inv_freq(self.head_dim, self.theta)
        t = torch.arange(self.max_positions, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # (max_pos, dim/2)
        self.cos = torch.cat([freqs, freqs], dim=-1).cos().float().to(self.cos.device)
        self.sin = torch.cat([-freqs, freqs], dim=-1).sin().float().to(self.sin.device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(num_tokens,) positions -> cos, sin of shape (num_tokens, 1, head_dim)."""
        return (self.cos[positions].unsqueeze(1).to(dtype),
                self.sin[positions].unsqueeze(1).to(dtype))


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (num_tokens, heads, head_dim) ``x`` by the precomputed cos/sin (into ``out``,
    which may be ``x`` itself: the products are taken before it is written)."""
    cos, sin = rope
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin, out=out)


class Attention(nn.Module):
    """Grouped-query attention over the paged KV cache: a fused q/k/v projection, an optional
    RMSNorm of each query and key head (Qwen3's ``qk_norm_eps``), rotary embedding of queries
    and keys, the write of keys and values into the cache, and the output projection."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 qkv_bias: bool = False, o_bias: bool = False,
                 qk_norm_eps: float | None = None) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        self.qkv_proj: nn.Module = nn.Linear(hidden_size, self.q_size + 2 * self.kv_size,
                                             bias=qkv_bias)
        self.o_proj: nn.Module = nn.Linear(self.q_size, hidden_size, bias=o_bias)
        self.q_norm = None if qk_norm_eps is None else RMSNorm(head_dim, qk_norm_eps)
        self.k_norm = None if qk_norm_eps is None else RMSNorm(head_dim, qk_norm_eps)
        # (num_slots, 2 * kv_heads, head_dim): each slot's keys, then its values; set by the runner
        self.kv_cache = torch.empty(0)
        self.own_kernels = False  # see use_own_kernels

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        num_tokens, heads, kv_heads = x.shape[0], self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(num_tokens, -1, self.head_dim)  # heads, kv_heads, kv_heads
        if self.q_norm is not None and self.k_norm is not None:  # before the rotary embedding
            qkv[:, :heads] = self.q_norm(qkv[:, :heads])
            qkv[:, heads:heads + kv_heads] = self.k_norm(qkv[:, heads:heads + kv_heads])
        if self.own_kernels and qkv.is_contiguous():
            torch.ops.infermcp.rope_and_cache(qkv, rope[0], rope[1], meta.slot_mapping,
                                              self.kv_cache, heads)
        else:
            qk = qkv[:, :heads + kv_heads]
            apply_rope(qk, rope, out=qk)  # queries and keys together, in place
            self.kv_cache.index_copy_(0, meta.slot_mapping, qkv[:, heads:])
        q, kv = qkv[:, :heads], qkv[:, heads:]  # kv: rotated keys, then values, as cached
        split = meta.num_chunk_tokens
        outs = []
        if meta.chunks:
            outs.append(self._chunks(q[:split], kv[:split], meta.chunks))
        if meta.gather_index is not None:
            outs.append(self._rows(q[split:], meta))
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return self.o_proj(out.reshape(num_tokens, self.q_size))

    def _chunks(self, q: torch.Tensor, kv: torch.Tensor, chunks: list[ChunkContext]
                ) -> torch.Tensor:
        outs = []
        lens = [c.num_tokens for c in chunks]
        kv_heads = self.num_kv_heads
        for chunk, qs, kvs in zip(chunks, q.split(lens), kv.split(lens), strict=True):
            if chunk.slots is not None:  # continue a cached prefix
                kvs = self.kv_cache.index_select(0, chunk.slots)
            # (1, heads, n, head_dim) queries over (1, kv_heads, context, head_dim)
            keys = kvs[:, :kv_heads].transpose(0, 1).unsqueeze(0)
            values = kvs[:, kv_heads:].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(
                qs.transpose(0, 1).unsqueeze(0), keys, values, attn_mask=chunk.mask,
                is_causal=chunk.mask is None, enable_gqa=True)
            outs.append(o.squeeze(0).transpose(0, 1))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _rows(self, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        assert meta.gather_index is not None
        if self.own_kernels and self.head_dim in (64, 128):
            # in place over the paged cache: measured alone, 4.5x faster than the gather and
            # SDPA below at 16 rows of 300 tokens, 5x at one row of 100
            out: torch.Tensor = torch.ops.infermcp.decode_attention(
                q, self.kv_cache, meta.gather_index, meta.attn_mask, self.head_dim ** -0.5)
            return out
        # index_select copies whole slots; it is several times faster than advanced indexing
        context = self.kv_cache.index_select(0, meta.gather_index)
        context = context.view(q.shape[0], -1, 2 * self.num_kv_heads, self.head_dim)
        rows, kv_heads = q.shape[0], self.num_kv_heads
        keys = context[:, :, :kv_heads].transpose(1, 2)  # (rows, kv_heads, len, dim)
        values = context[:, :, kv_heads:].transpose(1, 2)
        # The query heads that share a key/value head all attend its whole context, so they
        # go in as the rows of one query block: (rows, kv_heads, heads per kv head, dim). At 16
        # rows of 300 tokens SDPA alone ran 1.6x faster this way than with one query per head and
        # enable_gqa (a whole decode step, about 10% faster).
        grouped = q.view(rows, kv_heads, self.num_heads // kv_heads, self.head_dim)
        o = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=meta.attn_mask)
        return o.view(rows, self.num_heads, self.head_dim)


class MLP(nn.Module):
    """The gated MLP: down(silu(gate(x)) * up(x)), with gate and up fused in one projection."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj: nn.Module = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj: nn.Module = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.own_kernels = False  # see use_own_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.own_kernels and gate_up.dim() == 2:
            return self.down_proj(torch.ops.infermcp.silu_mul(gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def use_own_kernels(model: nn.Module, on: bool) -> None:
    """Whether the layers of ``model`` run :mod:`core.models.kernels`' operations instead of
    torch's: decided once, by whoever builds the model, from whether the kernels were built and
    the model is float32 on the CPU (what they take). Off until this is called."""
    for module in model.modules():
        if isinstance(module, RMSNorm | Attention | MLP):
            module.own_kernels = on
