"""The Llama family (Llama 2/3.x, SmolLM, Mistral, Qwen2, Qwen3): RMSNorm before attention and
before a gated MLP, rotate-half rotary embedding (Llama 3.x scaling, yarn), grouped-query
attention with optional q/k/v (and, in Llama, output) biases and, in Qwen3, an RMSNorm of each
query and key head; Mistral's sliding window where its config sets one."""

from __future__ import annotations

from typing import Any

import torch

from core.models.attention import AttentionMetadata, Rope
from core.models.config import ModelConfig
from core.models.decoder import CausalLM, DecoderLayer, Loader, attention, mlp
from core.models.layers import RMSNorm

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def config(cfg: dict[str, Any]) -> ModelConfig:
    model_type = cfg.get("model_type", "")
    bias = bool(cfg.get("attention_bias", model_type == "qwen2"))
    return ModelConfig.from_hf(
        cfg, attention_bias=bias, o_proj_bias=model_type in ("llama", "qwen3") and bias,
        qk_norm="head" if model_type == "qwen3" else "",
        sliding_windows=ModelConfig.windows(cfg))


class LlamaLayer(DecoderLayer):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = mlp(cfg)

    def forward(self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, meta)
        return x + self.mlp(self.post_attention_layernorm(x))

    def load(self, loader: Loader, b: str) -> None:
        loader.attention(self.self_attn, b)
        loader.mlp(self.mlp, b)
        loader.norm(self.input_layernorm, f"{b}attn_norm")
        loader.norm(self.post_attention_layernorm, f"{b}ffn_norm")


class Llama(CausalLM):
    layer = LlamaLayer
