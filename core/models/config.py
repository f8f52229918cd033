"""The architecture numbers a model runner needs, read from a Hugging Face ``config.json``:
those every family has, and the knobs some families turn (neutral by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ModelLoadError
from core.models.rotary import ROPE_TYPES, RopeScaling


@dataclass(frozen=True)
class ModelConfig:
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
    qk_norm: str  # "", "head" (Qwen3, Gemma 3) or "full" (OLMo 2): see core.models.attention
    mlp_bias: bool
    eos_token_ids: tuple[int, ...]
    hidden_act: str = "silu"
    rotary_dim: int = 0  # 0: all of head_dim
    # per layer: the sliding window of its attention, 0 for none (empty: none anywhere)
    sliding_windows: tuple[int, ...] = ()
    local_rope_theta: float = 0.0  # Gemma 3: the sliding layers' own rotary base (0: none)
    attn_scale: float = 0.0  # of attention scores (0: head_dim ** -0.5)
    attn_softcap: float = 0.0  # Gemma 2 (0: none)
    final_softcap: float = 0.0  # of the logits, Gemma 2 (0: none)
    embed_scale: float = 1.0  # embeddings multiplied by (Gemma, Granite)
    residual_scale: float = 1.0  # each block's output, before its residual add (Granite)
    logits_scale: float = 1.0  # logits multiplied by (Granite divides by logits_scaling)
    # Qwen3-MoE: experts, how many a token, their width, and which layers have them
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    sparse_layers: tuple[bool, ...] = ()

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], **family: Any) -> ModelConfig:
        """The fields every family shares; ``family``: the family's own, by field name."""
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if "full_attention" in rope:  # Gemma 3: per layer type; these are the global layers'
            rope = rope["full_attention"]
        max_positions = cfg.get("max_position_embeddings", 2048)
        scaling = RopeScaling.from_hf({"original_max_position_embeddings":
                                       cfg.get("original_max_position_embeddings"), **rope},
                                      max_positions)
        if scaling.kind not in ROPE_TYPES:
            raise ModelLoadError(f"unsupported rope scaling {scaling.kind!r}; supported: "
                                 f"{', '.join(ROPE_TYPES)}")
        num_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads
        partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
        section = scaling.mrope_section  # M-RoPE: frequencies a position component
        if section and (len(section) != 3 or 2 * sum(section) != int(head_dim * partial)):
            raise ModelLoadError(f"the mrope_section {list(section)} must be three counts "
                                 f"that sum to half the rotary dim ({int(head_dim * partial)})")
        eos = cfg.get("eos_token_id")
        model_type = cfg.get("model_type", "")
        fields: dict[str, Any] = dict(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
            rope_scaling=scaling,
            max_position_embeddings=max_positions,
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=bool(cfg.get("attention_bias", False)),
            o_proj_bias=False,
            qk_norm="",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None
                                else []),
            hidden_act=cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu",
            rotary_dim=int(head_dim * partial) if partial != 1.0 else 0,
        )
        return cls(**(fields | family))

    @staticmethod
    def windows(cfg: dict[str, Any], pattern: int = 0) -> tuple[int, ...]:
        """Each layer's sliding window, from ``layer_types`` or, without them, every layer's
        (``pattern`` 0) or all but every ``pattern``-th's; none without a ``sliding_window``
        or with ``use_sliding_window`` off (Qwen2)."""
        window = cfg.get("sliding_window") or 0
        if not window or cfg.get("use_sliding_window") is False:
            return ()
        types = cfg.get("layer_types") or [
            "full_attention" if pattern and (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(cfg["num_hidden_layers"])]
        return tuple(window if kind == "sliding_attention" else 0 for kind in types)

    @property
    def windowed(self) -> bool:
        return any(self.sliding_windows)
