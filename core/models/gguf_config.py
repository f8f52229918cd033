"""The Hugging Face ``config.json`` a GGUF file's metadata describes, for each llama.cpp
architecture served here: what llama.cpp's converter (``convert_hf_to_gguf.py``) writes under
``<arch>.*`` keys, and what llama.cpp's runtime (``src/models/<arch>.cpp``) assumes where the
file says nothing.

Every architecture: sizes, heads, the norms' epsilon, the rotary base and scaling, the context
length. The head size is ``attention.key_length`` (else hidden / heads); a
``rope.dimension_count`` below it is a partial rotary embedding (Phi-4-mini's). A sliding window
(``attention.sliding_window``) covers the layers ``attention.sliding_window_pattern`` flags, or
all but every n-th layer by the architecture's default period (llama.cpp's
``set_swa_pattern``). What each architecture adds (:data:`ARCHITECTURES`):

- ``llama``, ``granite``: query and key rows stored permuted for llama.cpp's interleaved rotary
  (:attr:`Architecture.permuted`); the others rotate halves, as Hugging Face does.
- ``gemma2``, ``gemma3``: norms stored as 1 + w (the converter adds the 1). Queries scaled by
  1 / sqrt(head size), but by 1 / sqrt(hidden / heads) in the 27B models, which llama.cpp knows
  by their layer count (46, 62): ``query_pre_attn_scalar`` is not in the file. Gemma 2: a window
  on every other layer (4096 if the file names none), soft-caps of scores and logits (50 and 30
  by default). Gemma 3: five sliding layers in six, rotating by ``rope.freq_base_swa`` (10000 by
  default) unscaled; the global layers by ``rope.freq_base`` with the file's linear scaling.
- ``phi3``: longrope's factors as the tensors ``rope_factors_short`` and ``rope_factors_long``,
  the original context as ``rope.scaling.original_context_length``; the converter's
  ``rope.scaling.attn_factor`` is sqrt(1 + ln(s) / ln(original)), which
  :class:`core.models.rotary.RopeScaling` computes from the same lengths. Its sliding window
  (every layer's) applies here as in transformers; llama.cpp, for now, ignores it with a warning.
- ``granite``: ``embedding_scale``, ``residual_scale`` and ``attention.scale`` multiply;
  ``logit_scale`` divides the logits. Without ``attention.scale``: 1 / sqrt(head size).
- ``olmo2``: nothing more (norms after attention and the MLP, q/k norms over all heads); a file
  with a sliding window is OLMo 3's, which is not supported.
- ``qwen3moe``: ``expert_count``, ``expert_used_count``, ``expert_feed_forward_length``; llama.cpp
  always renormalizes the chosen experts' weights (``norm_topk_prob``), and has experts in
  every layer (no ``mlp_only_layers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ModelLoadError

if TYPE_CHECKING:
    from core.models.gguf import GGUFFile

Fields = dict[str, Any]


def key(file: GGUFFile, name: str, default: Any = None) -> Any:
    """The metadata value ``<arch>.<name>`` of ``file``, or ``default``."""
    return file.metadata.get(f"{file.arch}.{name}", default)


def _none(file: GGUFFile, config: Fields) -> Fields:
    return {}


@dataclass(frozen=True)
class Architecture:
    """What one llama.cpp architecture's files hold beyond the keys all of them share."""

    model_type: str
    hf_class: str
    permuted: bool = False  # q/k rows in llama.cpp's interleaved rotary order
    window_period: int = 0  # by default every n-th layer is global (0: none is)
    default_window: int = 0  # the window where the file names none (0: no window)
    # the architecture's own fields, from the file and the shared fields
    own: Callable[[GGUFFile, Fields], Fields] = _none


def _gemma_scalar(config: Fields, layers_27b: int) -> int:
    if config["num_hidden_layers"] == layers_27b:
        return int(config["hidden_size"] // config["num_attention_heads"])
    return int(config["head_dim"])


def _gemma2(file: GGUFFile, config: Fields) -> Fields:
    return {"query_pre_attn_scalar": _gemma_scalar(config, 46),
            "attn_logit_softcapping": key(file, "attn_logit_softcapping", 50.0),
            "final_logit_softcapping": key(file, "final_logit_softcapping", 30.0)}


def _gemma3(file: GGUFFile, config: Fields) -> Fields:
    return {"query_pre_attn_scalar": _gemma_scalar(config, 62),
            "final_logit_softcapping": key(file, "final_logit_softcapping"),
            "rope_local_base_freq": key(file, "rope.freq_base_swa", 10000.0)}


def _phi3(file: GGUFFile, config: Fields) -> Fields:
    original = key(file, "rope.scaling.original_context_length")
    own: Fields = {"original_max_position_embeddings": original} if original else {}
    if file.has("rope_factors_long.weight"):
        own["rope_scaling"] = {
            "rope_type": "longrope", "original_max_position_embeddings": original,
            "short_factor": file.tensor("rope_factors_short.weight").tolist(),
            "long_factor": file.tensor("rope_factors_long.weight").tolist()}
    return own


def _granite(file: GGUFFile, config: Fields) -> Fields:
    return {"embedding_multiplier": key(file, "embedding_scale") or 1.0,
            "residual_multiplier": key(file, "residual_scale") or 1.0,
            "attention_multiplier": key(file, "attention.scale") or config["head_dim"] ** -0.5,
            "logits_scaling": key(file, "logit_scale") or 1.0}


def _olmo2(file: GGUFFile, config: Fields) -> Fields:
    if config.get("sliding_window"):
        raise ModelLoadError(f"{file.path}: an olmo2 file with a sliding window (OLMo 3) is not "
                             "supported; OLMo 2 is")
    return {}


def _qwen3_moe(file: GGUFFile, config: Fields) -> Fields:
    used = key(file, "expert_used_count")
    return {"num_experts": key(file, "expert_count"), "num_experts_per_tok": used,
            "moe_intermediate_size": key(file, "expert_feed_forward_length")
            or config["intermediate_size"] // used,
            "norm_topk_prob": True}


ARCHITECTURES = {
    "llama": Architecture("llama", "LlamaForCausalLM", permuted=True),
    "qwen2": Architecture("qwen2", "Qwen2ForCausalLM"),
    "qwen3": Architecture("qwen3", "Qwen3ForCausalLM"),
    "gemma2": Architecture("gemma2", "Gemma2ForCausalLM", window_period=2,
                           default_window=4096, own=_gemma2),
    "gemma3": Architecture("gemma3_text", "Gemma3ForCausalLM", window_period=6, own=_gemma3),
    "phi3": Architecture("phi3", "Phi3ForCausalLM", own=_phi3),
    "granite": Architecture("granite", "GraniteForCausalLM", permuted=True, own=_granite),
    "olmo2": Architecture("olmo2", "Olmo2ForCausalLM", own=_olmo2),
    "qwen3moe": Architecture("qwen3_moe", "Qwen3MoeForCausalLM", own=_qwen3_moe),
}


def architecture(file: GGUFFile) -> Architecture:
    """``file``'s architecture; an unsupported one is a load error listing the supported."""
    if file.arch not in ARCHITECTURES:
        raise ModelLoadError(f"{file.path}: the architecture {file.arch!r} is not supported; "
                             f"supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[file.arch]


def hf_config(file: GGUFFile) -> Fields:
    """The ``config.json`` that ``file``'s metadata describes (its header, and in Phi-3 the two
    small rotary factor tensors)."""
    spec, meta = architecture(file), file.metadata
    hidden, heads = key(file, "embedding_length"), key(file, "attention.head_count")
    rotary = key(file, "rope.dimension_count")
    head_dim = key(file, "attention.key_length") or max(rotary or 0, hidden // heads)
    config: Fields = {
        "model_type": spec.model_type, "architectures": [spec.hf_class],
        "vocab_size": file.shape("token_embd.weight")[0],
        "hidden_size": hidden, "intermediate_size": key(file, "feed_forward_length"),
        "num_hidden_layers": key(file, "block_count"), "num_attention_heads": heads,
        "num_key_value_heads": key(file, "attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": key(file, "attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": key(file, "rope.freq_base", 10000.0),
        "max_position_embeddings": key(file, "context_length", 2048),
        "tie_word_embeddings": not file.has("output.weight"),
        "attention_bias": file.has("blk.0.attn_q.bias"),
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if rotary and rotary < head_dim:
        config["partial_rotary_factor"] = rotary / head_dim
    config |= _rope_scaling(file) | _windows(file, spec, config["num_hidden_layers"])
    return config | spec.own(file, config)


def _rope_scaling(file: GGUFFile) -> Fields:
    """llama.cpp's scaling (linear where a factor has no type); llama3's is a ``rope_freqs``
    tensor instead (:meth:`core.models.decoder.CausalLM.load_weights`)."""
    factor = key(file, "rope.scaling.factor") or key(file, "rope.scale_linear")
    kind = key(file, "rope.scaling.type") or ("linear" if factor else "none")
    if kind == "none":
        return {}
    rope: Fields = {"rope_type": kind, "factor": factor or 1.0}
    original = key(file, "rope.scaling.original_context_length")
    if original:
        rope["original_max_position_embeddings"] = original
    return {"rope_scaling": rope}


def _windows(file: GGUFFile, spec: Architecture, layers: int) -> Fields:
    """The window and each layer's kind, as llama.cpp's ``load_swa_pattern`` reads them."""
    window = key(file, "attention.sliding_window") or spec.default_window
    if not window:
        return {}
    pattern = key(file, "attention.sliding_window_pattern")
    if isinstance(pattern, tuple):  # a flag a layer
        sliding = [bool(flag) for flag in pattern]
    else:  # a period: all but every n-th layer slide (0: all do)
        n = spec.window_period if pattern is None else int(pattern)
        sliding = [n == 0 or i % n < n - 1 for i in range(layers)]
    return {"sliding_window": window,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding]}
