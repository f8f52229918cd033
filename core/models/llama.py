"""The Llama family (Llama, SmolLM, Mistral, Qwen2, Qwen3) on the shared layers of
:mod:`core.models.layers`: RMSNorm before attention and before a gated MLP, rotate-half rotary
embedding, grouped-query attention with optional q/k/v (and, in Llama, output) biases and, in
Qwen3, an RMSNorm of each query and key head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from core.errors import ModelLoadError
from core.models.checkpoint import WeightSource, fused_biases
from core.models.layers import (
    MLP,
    Attention,
    AttentionMetadata,
    RMSNorm,
    RopeScaling,
    Rotary,
)
from core.models.quant import (
    Int4Blocks,
    Int4Embedding,
    Int4Linear,
    Int8Blocks,
    Int8Embedding,
    Weight,
)

# builds a projection from its weights and bias; True for the LM head
LinearBuilder = Callable[[Weight, torch.Tensor | None, bool], nn.Module]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3")  # llama.cpp's names (its Mistral files say llama)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture numbers the runner needs, read from a Hugging Face ``config.json``."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections
    o_proj_bias: bool  # Llama and Qwen3 put a bias on o_proj too when attention_bias is set
    qk_norm: bool  # Qwen3: an RMSNorm of each query and key head before the rotary embedding
    mlp_bias: bool
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(f"unsupported model_type {model_type!r}; "
                                 f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ModelLoadError(f"unsupported rope scaling {rope_type!r}; supported: "
                                 f"{', '.join(ROPE_TYPES)}")
        num_heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        return cls(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
            rope_scaling=RopeScaling(
                rope_type, factor=rope.get("factor", 1.0),
                low_freq_factor=rope.get("low_freq_factor", 1.0),
                high_freq_factor=rope.get("high_freq_factor", 4.0),
                original_max_positions=rope.get("original_max_position_embeddings",
                                                cfg.get("max_position_embeddings", 8192))),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=cfg.get("attention_bias", model_type == "qwen2"),
            o_proj_bias=model_type in ("llama", "qwen3") and bool(cfg.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
        )


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                   qkv_bias=cfg.attention_bias, o_bias=cfg.o_proj_bias,
                                   qk_norm_eps=cfg.rms_norm_eps if cfg.qk_norm else None)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLM(nn.Module):
    """Embedding, decoder layers, final norm and LM head; weights named as in HF checkpoints."""

    def __init__(self, cfg: ModelConfig, max_positions: int | None = None) -> None:
        """``max_positions``: how many positions the rotary tables cover (default: the
        config's context length; a 1B model's 131072 take 64 MB)."""
        super().__init__()
        self.cfg = cfg
        # given its (meta) weight: no random init, whose meta kernel imports torch's compiler
        self.embed_tokens: nn.Module = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        with torch.device("cpu"):  # not in checkpoints: computed here, even on a meta model
            self.rope = Rotary(cfg.head_dim, min(cfg.max_position_embeddings,
                                                 max_positions or cfg.max_position_embeddings),
                               cfg.rope_theta, cfg.rope_scaling)
        self.lm_head: nn.Module = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """(num_tokens,) ids and positions -> (num_tokens, hidden) final hidden states."""
        x = self.embed_tokens(input_ids)
        rope = self.rope(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, meta)
        return self.norm(x)

    def cover_positions(self, positions: int) -> None:
        """Make the rotary tables cover ``positions`` (within the config's context length):
        a model that shares another's weights may have a longer KV cache."""
        wanted = min(self.cfg.max_position_embeddings, positions)
        if self.rope.max_positions < wanted:
            self.rope = Rotary(self.cfg.head_dim, wanted, self.cfg.rope_theta,
                               self.rope.scaling).to(self.rope.cos.device)

    def attach_kv_cache(self, kv_cache: torch.Tensor) -> None:
        """Give each layer its slice of the (layers, slots, 2 * kv_heads, head_dim) cache."""
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, DecoderLayer)
            layer.self_attn.kv_cache = kv_cache[i]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(num_seqs, hidden) -> (num_seqs, vocab) float32 logits."""
        return self.lm_head(hidden).float()

    def load_weights(self, file: WeightSource, linear: LinearBuilder, dtype: torch.dtype
                     ) -> None:
        """Take the weights from a GGUF file or a safetensors checkpoint (by llama.cpp's names),
        tensor by tensor: ``linear`` builds each projection, q/k/v and gate/up fused, in the
        served format before the next is read."""
        permuted = (self.cfg.num_heads, self.cfg.num_kv_heads, None) \
            if file.rotary_permuted else (None, None, None)
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, DecoderLayer)
            b = f"blk.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            qkv = [f"{b}attn_{n}" for n in "qkv"]
            attn.qkv_proj = linear(file.linear([f"{n}.weight" for n in qkv], permuted),
                                   fused_biases(file, qkv), False)
            attn.o_proj = linear(file.linear([f"{b}attn_output.weight"], [None]),
                                 fused_biases(file, [f"{b}attn_output"]), False)
            gate_up = [f"{b}ffn_gate", f"{b}ffn_up"]
            mlp.gate_up_proj = linear(file.linear([f"{n}.weight" for n in gate_up], [None, None]),
                                      fused_biases(file, gate_up), False)
            mlp.down_proj = linear(file.linear([f"{b}ffn_down.weight"], [None]),
                                   fused_biases(file, [f"{b}ffn_down"]), False)
            layer.input_layernorm.weight = _param(file.tensor(f"{b}attn_norm.weight"), dtype)
            layer.post_attention_layernorm.weight = _param(file.tensor(f"{b}ffn_norm.weight"),
                                                           dtype)
            if attn.q_norm is not None and attn.k_norm is not None:
                attn.q_norm.weight = _param(file.tensor(f"{b}attn_q_norm.weight"), dtype)
                attn.k_norm.weight = _param(file.tensor(f"{b}attn_k_norm.weight"), dtype)
        self.norm.weight = _param(file.tensor("output_norm.weight"), dtype)
        if file.has("rope_freqs.weight"):  # a GGUF's llama3 scaling, baked a factor a frequency
            factors = tuple(file.tensor("rope_freqs.weight").double().tolist())
            with torch.device(self.rope.cos.device):
                self.rope = Rotary(self.cfg.head_dim, self.rope.max_positions,
                                   self.cfg.rope_theta, replace(self.rope.scaling,
                                                                freq_factors=factors))
        embedding = file.linear(["token_embd.weight"], [None])
        tied = self.cfg.tie_word_embeddings or not file.has("output.weight")
        self.lm_head = linear(embedding if tied else file.linear(["output.weight"], [None]),
                              None, True)
        # a 4-bit table stays 4-bit: a lookup dequantizes its rows to the same floats; tied to
        # a head on the 4-bit kernel, it reads the head's blocks
        if tied and isinstance(self.lm_head, Int4Linear) and self.lm_head.codes is not None:
            self.embed_tokens = Int4Embedding(self.lm_head, dtype)
        elif isinstance(embedding, Int4Blocks):
            self.embed_tokens = Int4Embedding(embedding, dtype)
        elif isinstance(embedding, Int8Blocks):
            self.embed_tokens = Int8Embedding(embedding, dtype)
        else:
            self.embed_tokens = nn.Embedding.from_pretrained(embedding.to(dtype), freeze=True)


def _param(tensor: torch.Tensor, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(tensor.to(dtype), requires_grad=False)

