"""Phi-3, Phi-3.5 and Phi-4-mini: a Llama whose checkpoints fuse q/k/v into one projection and
gate/up into another, with ``longrope`` scaling, a partial rotary embedding (Phi-4-mini rotates
three quarters of each head) and a sliding window where the config sets one."""

from __future__ import annotations

from typing import Any

from core.models.config import ModelConfig
from core.models.decoder import CausalLM, Loader
from core.models.llama import LlamaLayer

MODEL_TYPES = ("phi3",)
# llama.cpp's names of the fused tensors (its ffn_up holds gate and up)
HF_NAMES = {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}


def config(cfg: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_hf(cfg, sliding_windows=ModelConfig.windows(cfg))


class Phi3Layer(LlamaLayer):
    def load(self, loader: Loader, b: str) -> None:
        loader.attention(self.self_attn, b, qkv=["attn_qkv"])
        loader.mlp(self.mlp, b, gate_up=["ffn_up"])
        loader.norm(self.input_layernorm, f"{b}attn_norm")
        loader.norm(self.post_attention_layernorm, f"{b}ffn_norm")


class Phi3(CausalLM):
    layer = Phi3Layer
