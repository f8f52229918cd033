"""OLMo 2: no norm before attention or the MLP, an RMSNorm of each one's output instead (before
the residual add), and RMSNorms of the whole query and key projections."""

from __future__ import annotations

from typing import Any

import torch

from core.models.attention import AttentionMetadata, Rope
from core.models.config import ModelConfig
from core.models.decoder import CausalLM, DecoderLayer, Loader, attention, mlp
from core.models.layers import RMSNorm

MODEL_TYPES = ("olmo2",)
HF_NAMES = {"post_attention_norm": "post_attention_layernorm",
            "post_ffw_norm": "post_feedforward_layernorm"}


def config(cfg: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_hf(cfg, qk_norm="full")


class Olmo2Layer(DecoderLayer):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.self_attn = attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = mlp(cfg)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(x, rope, meta))
        return x + self.post_feedforward_layernorm(self.mlp(x))

    def load(self, loader: Loader, b: str) -> None:
        loader.attention(self.self_attn, b)
        loader.mlp(self.mlp, b)
        loader.norm(self.post_attention_layernorm, f"{b}post_attention_norm")
        loader.norm(self.post_feedforward_layernorm, f"{b}post_ffw_norm")


class Olmo2(CausalLM):
    layer = Olmo2Layer
