"""Gemma 2 and Gemma 3 (text): RMSNorms before and after both attention and the MLP, each
scaling by 1 + w; embeddings scaled by sqrt(hidden); a tanh-gelu gated MLP; scores scaled by
``query_pre_attn_scalar``; sliding-window layers alternating with global ones (Gemma 2: one in
two; Gemma 3: five in six, with a rotary base of their own). Gemma 2 soft-caps attention
scores and logits; Gemma 3 normalizes each query and key head instead."""

from __future__ import annotations

from typing import Any

import torch

from core.models.attention import AttentionMetadata, Rope
from core.models.config import ModelConfig
from core.models.decoder import CausalLM, DecoderLayer, Loader, attention, mlp
from core.models.layers import RMSNorm

MODEL_TYPES = ("gemma2", "gemma3_text")
# llama.cpp's names: Gemma's post-attention norm is not Llama's pre-MLP one
HF_NAMES = {"post_attention_norm": "post_attention_layernorm",
            "ffn_norm": "pre_feedforward_layernorm",
            "post_ffw_norm": "post_feedforward_layernorm"}


def config(cfg: dict[str, Any]) -> ModelConfig:
    gemma3 = cfg.get("model_type") == "gemma3_text"
    rope = cfg.get("rope_parameters") or {}
    local = rope.get("sliding_attention", {}).get("rope_theta") \
        or cfg.get("rope_local_base_freq", 10000.0)
    return ModelConfig.from_hf(
        cfg, hidden_act=cfg.get("hidden_activation") or "gelu_pytorch_tanh",
        qk_norm="head" if gemma3 else "",
        attn_scale=cfg.get("query_pre_attn_scalar", cfg["hidden_size"]
                           // cfg["num_attention_heads"]) ** -0.5,
        attn_softcap=cfg.get("attn_logit_softcapping") or 0.0,
        final_softcap=cfg.get("final_logit_softcapping") or 0.0,
        sliding_windows=ModelConfig.windows(cfg, pattern=6 if gemma3 else 2),
        local_rope_theta=local if gemma3 else 0.0,
        embed_scale=cfg["hidden_size"] ** 0.5,
        tie_word_embeddings=cfg.get("tie_word_embeddings", True))


class GemmaLayer(DecoderLayer):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__(cfg, index)
        size, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps)
        self.self_attn = attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(size, eps)
        self.pre_feedforward_layernorm = RMSNorm(size, eps)
        self.mlp = mlp(cfg)
        self.post_feedforward_layernorm = RMSNorm(size, eps)

    def forward(self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.post_attention_layernorm(
            self.self_attn(self.input_layernorm(x), rope, meta))
        return x + self.post_feedforward_layernorm(
            self.mlp(self.pre_feedforward_layernorm(x)))

    def load(self, loader: Loader, b: str) -> None:
        loader.attention(self.self_attn, b)
        loader.mlp(self.mlp, b)
        loader.norm(self.input_layernorm, f"{b}attn_norm")
        loader.norm(self.post_attention_layernorm, f"{b}post_attention_norm")
        loader.norm(self.pre_feedforward_layernorm, f"{b}ffn_norm")
        loader.norm(self.post_feedforward_layernorm, f"{b}post_ffw_norm")


class Gemma(CausalLM):
    layer = GemmaLayer
    hf_norm_shift = 1.0
