"""Qwen3-MoE: Qwen3's attention (an RMSNorm of each query and key head) with a sparse mixture
of experts in place of the MLP (in every ``decoder_sparse_step``-th layer not listed in
``mlp_only_layers``): a router picks ``num_experts_per_tok`` experts a token."""

from __future__ import annotations

from typing import Any

import torch

from core.models.attention import AttentionMetadata, Rope
from core.models.config import ModelConfig
from core.models.decoder import CausalLM, DecoderLayer, Loader, attention, mlp
from core.models.layers import MLP, RMSNorm, SparseMoE

MODEL_TYPES = ("qwen3_moe",)


def config(cfg: dict[str, Any]) -> ModelConfig:
    step, dense = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or [])
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    return ModelConfig.from_hf(
        cfg, qk_norm="head", num_experts=experts,
        experts_per_token=cfg.get("num_experts_per_tok", 0),
        moe_intermediate_size=cfg.get("moe_intermediate_size", 0),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        sparse_layers=tuple(experts > 0 and i not in dense and (i + 1) % step == 0
                            for i in range(cfg["num_hidden_layers"])))


class Qwen3MoeLayer(DecoderLayer):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__(cfg, index)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SparseMoE(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                             cfg.experts_per_token, cfg.norm_topk_prob) \
            if cfg.sparse_layers[index] else mlp(cfg)

    def forward(self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, meta)
        return x + self.mlp(self.post_attention_layernorm(x))

    def load(self, loader: Loader, b: str) -> None:
        loader.attention(self.self_attn, b)
        if isinstance(self.mlp, SparseMoE):
            self.mlp.router = loader.param(loader.file.tensor(f"{b}ffn_gate_inp.weight"))
            for index, expert in enumerate(self.mlp.experts):
                assert isinstance(expert, MLP)
                loader.mlp(expert, b, gate_up=["ffn_gate_exps", "ffn_up_exps"], expert=index)
        else:
            loader.mlp(self.mlp, b)
        loader.norm(self.input_layernorm, f"{b}attn_norm")
        loader.norm(self.post_attention_layernorm, f"{b}ffn_norm")


class Qwen3Moe(CausalLM):
    layer = Qwen3MoeLayer
    recordable = False  # which experts run depends on the router's choices
