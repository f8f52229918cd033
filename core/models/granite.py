"""Granite (3.x): a Llama with four multipliers: of the embeddings, of each block's output
before its residual add, of the attention scores (in place of 1 / sqrt(head_dim)), and a
divisor of the logits."""

from __future__ import annotations

from typing import Any

import torch

from core.models.attention import AttentionMetadata, Rope
from core.models.config import ModelConfig
from core.models.decoder import CausalLM
from core.models.llama import LlamaLayer

MODEL_TYPES = ("granite",)


def config(cfg: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_hf(
        cfg, embed_scale=cfg.get("embedding_multiplier", 1.0),
        residual_scale=cfg.get("residual_multiplier", 1.0),
        attn_scale=cfg.get("attention_multiplier", 1.0),
        logits_scale=1.0 / cfg.get("logits_scaling", 1.0))


class GraniteLayer(LlamaLayer):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.residual_scale = cfg.residual_scale

    def forward(self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, meta) * self.residual_scale
        return x + self.mlp(self.post_attention_layernorm(x)) * self.residual_scale


class Granite(CausalLM):
    layer = GraniteLayer
