"""Tiny GGUF files for the GGUF loader's tests, written the way llama.cpp writes them.

``write_tiny_gguf`` stores a random-weight Hugging Face model of any family in :data:`ARCHES`
(Llama, Qwen2/3, Gemma 2/3, Phi-3, Granite, OLMo 2, Qwen3-MoE) as llama.cpp's
``convert_hf_to_gguf.py`` would: its architecture's metadata keys, llama.cpp tensor names, Llama's
and Granite's q/k rows permuted, Gemma's norms plus one, Qwen3-MoE's experts in 3-D tensors,
Phi-3's longrope factors as tensors, 2-D and 3-D weights quantized, 1-D tensors in F32, and the
tokenizer metadata of the bundled SmolLM2 GGUF (so the model's vocabulary must be
``VOCAB_SIZE``). ``round_trip`` is the model such a file holds: what a correct loader must
reproduce. ``corrupt_copies`` spoils a file for the error tests. ``sentencepiece_metadata`` is a
SentencePiece vocabulary's metadata as llama.cpp writes it (Llama 2's, Phi-3's, Gemma's), trained
here; ``write_tokenizer_gguf`` writes it to a file whose tokenizer ``write_tiny_gguf`` can take.

Weights are quantized by :func:`tests.core.models.gguf_quants.quantize` (gguf-py's quantizer, and
encoders of its own for the K-quants).
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QType
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from core.models.loader import default_gguf
from tests.core.models.gguf_quants import K_QUANTS, dequantize, quantize

VOCAB_SIZE = 49152  # the bundled SmolLM2 tokenizer's: every tiny model written here uses it
WRITABLE = (QType.F32, QType.F16, QType.BF16, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1,
            QType.Q8_0, *K_QUANTS)
UNKNOWN_TYPE_ID = 0x7ABC  # no GGML type has this id
# the llama.cpp architecture of each model_type written here
ARCHES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
          "qwen3": gguf.MODEL_ARCH.QWEN3, "gemma2": gguf.MODEL_ARCH.GEMMA2,
          "gemma3_text": gguf.MODEL_ARCH.GEMMA3, "phi3": gguf.MODEL_ARCH.PHI3,
          "granite": gguf.MODEL_ARCH.GRANITE, "olmo2": gguf.MODEL_ARCH.OLMO2,
          "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE}
PERMUTED = ("llama", "granite")  # the converter's LlamaModel and its subclasses permute q/k
GEMMA = ("gemma2", "gemma3_text")  # the converter adds 1 to their norms
_FILE_TYPES = {QType.F32: gguf.LlamaFileType.ALL_F32, QType.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_M,
               QType.Q5_K: gguf.LlamaFileType.MOSTLY_Q5_K_M}
# llama.cpp's Q4_K_M and Q5_K_M recipes, in small: some layers' value and down projections and
# the output at Q6_K (there: half the layers'; here the first's), the rest in the main type
K_M_TYPES = {"blk.0.attn_v.weight": QType.Q6_K, "blk.0.ffn_down.weight": QType.Q6_K,
             "output.weight": QType.Q6_K}


def tiny_llama(hidden: int = 256, intermediate: int = 512, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, tie: bool = True, vocab: int = VOCAB_SIZE,
               seed: int = 0, rope: dict[str, Any] | None = None) -> LlamaForCausalLM:
    """A random Llama, by default with the bundled tokenizer's vocabulary. The defaults make
    every linear's input a multiple of 256, the K-quants' block; Q4_0/Q4_1/Q5_x/Q8_0 need only
    multiples of 32. Another ``vocab`` suits only files written ``with_tokenizer=False``."""
    torch.manual_seed(seed)
    config = LlamaConfig(**_shape(hidden, intermediate, layers, heads, kv_heads, tie, vocab),
                         rope_parameters=rope or {"rope_type": "default", "rope_theta": 100000.0})
    return LlamaForCausalLM(config).eval()


def tiny_qwen2(hidden: int = 256, intermediate: int = 512, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, tie: bool = False, vocab: int = VOCAB_SIZE,
               seed: int = 0) -> Qwen2ForCausalLM:
    """A random Qwen2 (q/k/v biases) with the bundled vocabulary; shapes as ``tiny_llama``."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**_shape(hidden, intermediate, layers, heads, kv_heads,
                                                  tie, vocab)))
    with torch.no_grad():  # transformers zero-inits biases: make them count
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.2)
    return model.eval()


def tiny_qwen3(hidden: int = 256, intermediate: int = 512, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, tie: bool = True, vocab: int = VOCAB_SIZE,
               seed: int = 0) -> Qwen3ForCausalLM:
    """A random Qwen3 (per-head q/k RMSNorm, head_dim 128 apart from hidden / heads) with the
    bundled vocabulary; shapes as ``tiny_llama``."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(head_dim=128, **_shape(hidden, intermediate, layers,
                                                                heads, kv_heads, tie, vocab)))
    with torch.no_grad():  # the norms start at ones: make them count
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.normal_(1.0, 0.5)
    return model.eval()


# The family builders' models (tests/core/models/test_families.py) as llama.cpp's files hold
# them: what a file cannot say is set to what llama.cpp assumes. Gemma's query scale is
# 1 / sqrt(head_dim) outside the 27B models; Gemma 3's layers follow its 5:1 pattern; every
# layer of a qwen3moe has experts.
AS_LLAMA_CPP: dict[str, dict[str, Any]] = {
    "gemma2": {"query_pre_attn_scalar": 16},  # the builder's head_dim
    "gemma3_text": {"num_hidden_layers": 6, "layer_types": None},
    "phi3": {}, "granite": {}, "olmo2": {}, "qwen3_moe": {"mlp_only_layers": []}}


def tiny_family(name: str, vocab: int = VOCAB_SIZE) -> PreTrainedModel:
    """The tiny random model of the family ``name`` (a key of :data:`AS_LLAMA_CPP`), its shapes
    whole blocks of Q4_0 and Q8_0 (multiples of 32), not of the K-quants."""
    from tests.core.models.test_families import build

    return build(name, vocab, **AS_LLAMA_CPP[name])


def _shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
           tie: bool, vocab: int) -> dict[str, Any]:
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.2,
                tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)


def write_tiny_gguf(path: Path, hf_model: PreTrainedModel, weight_type: QType,
                    tokenizer_from: Path | None = None, embedding_type: QType | None = None,
                    with_tokenizer: bool = True, types: Mapping[str, QType] | None = None
                    ) -> Path:
    """Write ``hf_model`` (of a model_type in :data:`ARCHES`) to ``path`` as a GGUF:
    2-D weights in ``weight_type``, token_embd in ``embedding_type`` (default ``weight_type``),
    norms and biases in F32, no output.weight when the embeddings are tied, and every
    ``tokenizer.*`` field of ``tokenizer_from`` (default: the bundled SmolLM2 GGUF, whose
    vocabulary of ``VOCAB_SIZE`` the model must share). ``with_tokenizer=False`` leaves the
    tokenizer out (any vocab size; gguf-py opens the file in milliseconds instead of ~3 s).
    Each quantized row length must be a whole number of the type's blocks (32, or 256 for the
    K-quants). ``types``: the types of particular 2-D tensors, by llama.cpp name or its end
    (``attn_v.weight``: every layer's), as :data:`K_M_TYPES`."""
    config, arch = hf_model.config, _arch(hf_model)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCHES[arch]])
    writer.add_name(f"tiny-{arch}")
    _add_hparams(writer, config, arch)
    writer.add_file_type(_file_type(weight_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if with_tokenizer:
        _add_tokenizer(writer, tokenizer_from or default_gguf(), config.vocab_size)
    for name, array, qtype, _ in _gguf_tensors(hf_model, weight_type, embedding_type, types):
        writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _arch(hf_model: PreTrainedModel) -> str:
    arch = hf_model.config.model_type
    if arch not in ARCHES:
        raise ValueError(f"no GGUF writer for model_type {arch!r}; have {sorted(ARCHES)}")
    return arch


def _add_hparams(writer: gguf.GGUFWriter, config: Any, arch: str) -> None:
    """The keys the converter's ``TextModel.set_gguf_parameters`` writes, then the family's."""
    rope = config.rope_parameters.get("full_attention", config.rope_parameters)
    head_dim = _head_dim(config)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
    if arch not in ("granite", "phi3"):  # their converters write no head size
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope.get("rope_type") in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope["rope_type"]))
        writer.add_rope_scaling_factor(rope["factor"])
        if rope["rope_type"] == "yarn":
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if local := config.rope_parameters.get("sliding_attention", {}).get("rope_theta"):
        writer.add_rope_freq_base_swa(local)
    _FAMILY_KEYS.get(arch, lambda w, c: None)(writer, config)


def _gemma_keys(writer: gguf.GGUFWriter, config: Any) -> None:
    if config.attn_logit_softcapping:
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    if config.final_logit_softcapping:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    writer.add_sliding_window(config.sliding_window)


def _phi3_keys(writer: gguf.GGUFWriter, config: Any) -> None:
    rope = config.rope_parameters
    original = rope["original_max_position_embeddings"]
    writer.add_rope_scaling_orig_ctx_len(original)
    writer.add_sliding_window(config.sliding_window or 0)
    if rope.get("long_factor"):
        scale = config.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(
            math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)


def _granite_keys(writer: gguf.GGUFWriter, config: Any) -> None:
    writer.add_attention_scale(config.attention_multiplier)
    writer.add_embedding_scale(config.embedding_multiplier)
    writer.add_residual_scale(config.residual_multiplier)
    writer.add_logit_scale(config.logits_scaling)


def _olmo2_keys(writer: gguf.GGUFWriter, config: Any) -> None:
    if getattr(config, "sliding_window", None):  # OLMo 3's: all but every 4th layer slide
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([(i + 1) % 4 != 0
                                           for i in range(config.num_hidden_layers)])


def _qwen3_moe_keys(writer: gguf.GGUFWriter, config: Any) -> None:
    writer.add_expert_count(config.num_experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    writer.add_expert_feed_forward_length(config.moe_intermediate_size)


_FAMILY_KEYS = {"gemma2": _gemma_keys, "gemma3_text": _gemma_keys, "phi3": _phi3_keys,
                "granite": _granite_keys, "olmo2": _olmo2_keys, "qwen3_moe": _qwen3_moe_keys}


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _file_type(weight_type: QType) -> gguf.LlamaFileType:
    if weight_type in _FILE_TYPES:
        return _FILE_TYPES[weight_type]
    return gguf.LlamaFileType[f"MOSTLY_{weight_type.name}"]


def _add_tokenizer(writer: gguf.GGUFWriter, source: Path, vocab_size: int) -> None:
    fields = tokenizer_fields(source.resolve())
    for key, value, vtype, sub_type in fields:
        if key == "tokenizer.ggml.tokens" and len(value) != vocab_size:
            raise ValueError(f"the model's vocab_size is {vocab_size} but {source.name} has "
                             f"{len(value)} tokens")
        writer.add_key_value(key, value, vtype, sub_type=sub_type)


@functools.cache
def tokenizer_fields(path: Path) -> tuple[tuple[str, Any, gguf.GGUFValueType,
                                                 gguf.GGUFValueType | None], ...]:
    """The ``tokenizer.*`` fields of a GGUF (cached: gguf-py takes ~3 s over 100k strings)."""
    reader = gguf.GGUFReader(path)
    return tuple((key, field.contents(), field.types[0],
                  field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
                 for key, field in reader.fields.items() if key.startswith("tokenizer."))


def _gguf_tensors(hf_model: PreTrainedModel, weight_type: QType, embedding_type: QType | None,
                  types: Mapping[str, QType] | None = None
                  ) -> list[tuple[str, np.ndarray, QType, str]]:
    """(llama.cpp name, float32 array as stored, type, Hugging Face name) for each tensor the
    file holds of ``hf_model``."""
    config, arch = hf_model.config, _arch(hf_model)
    names = gguf.get_tensor_name_map(ARCHES[arch], config.num_hidden_layers)
    tensors = []
    for hf_name, param in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" and (config.tie_word_embeddings or arch == "gemma2"):
            continue
        for name, array in _converted(hf_name, param.detach().float().numpy(), arch, config,
                                      names):
            qtype = QType.F32 if array.ndim == 1 else weight_type
            if name == "token_embd.weight" and embedding_type is not None:
                qtype = embedding_type
            qtype = next((t for key, t in (types or {}).items()
                          if array.ndim >= 2 and (name == key or name.endswith(f".{key}"))),
                         qtype)
            tensors.append((name, array, qtype, hf_name))
    rope = config.rope_parameters
    if rope.get("rope_type") == "llama3":
        tensors.append(("rope_freqs.weight", _llama3_rope_factors(config), QType.F32, ""))
    if arch == "phi3" and rope.get("long_factor"):
        for kind in ("long", "short"):
            tensors.append((f"rope_factors_{kind}.weight",
                            np.array(rope[f"{kind}_factor"], dtype=np.float32), QType.F32, ""))
    return tensors


def _converted(hf_name: str, array: np.ndarray, arch: str, config: Any,
               names: gguf.TensorNameMap) -> list[tuple[str, np.ndarray]]:
    """The converter's ``modify_tensors``: one Hugging Face tensor as the file's tensors."""
    if hf_name.endswith("mlp.experts.gate_up_proj"):  # (experts, 2 * ffn, hidden): gate, up
        base, half = hf_name.removesuffix("gate_up_proj"), array.shape[1] // 2
        return [*_converted(f"{base}gate_proj", array[:, :half], arch, config, names),
                *_converted(f"{base}up_proj", array[:, half:], arch, config, names)]
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ValueError(f"no llama.cpp name for {hf_name}")
    if not name.endswith((".weight", ".bias")):  # transformers' 3-D expert tensors
        name += ".weight"
    if arch in PERMUTED and name.endswith(("attn_q.weight", "attn_k.weight")):
        heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
        array = permute_rows(array, heads)
    if arch in GEMMA and hf_name.endswith("norm.weight"):
        array = array + np.float32(1.0)
    return [(name, np.ascontiguousarray(array))]


def _llama3_rope_factors(config: Any) -> np.ndarray:
    """What llama.cpp's converter stores for Llama 3.1 scaling: each frequency's divisor,
    default / scaled (the scaled ones as transformers computes them)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    dim = _head_dim(config)
    default = 1.0 / (config.rope_parameters["rope_theta"]
                     ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return (default / scaled.double().numpy()).astype(np.float32)


def permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation (``convert_hf_to_gguf.py``): within each head, HF's rotary
    halves layout becomes interleaved pairs. ``weight`` is (heads * head_dim, in)."""
    head_dim = weight.shape[0] // heads
    return (weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of ``permute_rows``: what a loader applies to Llama's attn_q/attn_k."""
    head_dim = weight.shape[0] // heads
    return (weight.reshape(heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def round_trip(hf_model: PreTrainedModel, weight_type: QType,
               embedding_type: QType | None = None, types: Mapping[str, QType] | None = None
               ) -> PreTrainedModel:
    """A copy of ``hf_model`` holding exactly what ``write_tiny_gguf`` stores: every quantized
    weight replaced by ``dequantize(quantize(w))``. Done in the Hugging Face layout: the types
    quantize each row's blocks on their own, so the file's row orders (permuted, split, fused)
    change nothing; F32 tensors are the model's own (Gemma's norms stored as 1 + w: transformers
    computes the same 1 + w in float32). A correct loader reproduces its logits."""
    model = type(hf_model)(hf_model.config).eval()
    model.load_state_dict(hf_model.state_dict())
    qtypes = {hf_name: qtype for *_, qtype, hf_name in
              _gguf_tensors(hf_model, weight_type, embedding_type, types)}
    with torch.no_grad():
        for hf_name, param in model.named_parameters():
            qtype = qtypes.get(hf_name, QType.F32)  # none: a tied lm_head
            if qtype != QType.F32:
                array = param.numpy()
                stored = dequantize(quantize(array, qtype), qtype).reshape(array.shape)
                param.copy_(torch.from_numpy(stored))
    return model


def dequantized_tensors(path: Path) -> dict[str, tuple[QType, np.ndarray]]:
    """Each tensor of the GGUF at ``path`` as gguf-py reads it: llama.cpp name -> (type, float32
    array in numpy order, e.g. (out, in); Llama's attn_q/attn_k still permuted)."""
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type, dequantize(t.data, t.tensor_type).reshape(
        tuple(reversed(t.shape.tolist())))) for t in reader.tensors}


def corrupt_copies(path: Path, out_dir: Path) -> dict[str, Path]:
    """Spoiled copies of the GGUF at ``path`` in ``out_dir``: ``"truncated"`` (cut halfway
    through the last tensor's data), ``"bad_magic"`` (not starting with b"GGUF") and
    ``"unknown_type"`` (the first tensor's GGML type id is ``UNKNOWN_TYPE_ID``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cut, type_offset = _corruption_offsets(path)
    copies = {name: out_dir / f"{name}.gguf" for name in ("truncated", "bad_magic", "unknown_type")}
    for copy in copies.values():
        shutil.copyfile(path, copy)
    with copies["truncated"].open("r+b") as f:
        f.truncate(cut)
    _overwrite(copies["bad_magic"], 0, b"GGUX")
    _overwrite(copies["unknown_type"], type_offset, UNKNOWN_TYPE_ID.to_bytes(4, "little"))
    return copies


def _corruption_offsets(path: Path) -> tuple[int, int]:
    """(halfway through the last tensor's data, the first tensor's type id) in bytes."""
    reader = gguf.GGUFReader(path)
    last = max(reader.tensors, key=lambda t: t.data_offset)
    first = reader.tensors[0].field  # parts: name length, name, n_dims, dims, type, offset
    return (last.data_offset + last.n_bytes // 2,
            first.offset + sum(int(part.nbytes) for part in first.parts[:4]))


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


# ------------------------------------------------------------------ SentencePiece vocabularies

# the special tokens llama.cpp writes first in each family's vocabulary (text: token type)
LLAMA_SPECIALS = {"<unk>": 2, "<s>": 3, "</s>": 3}
GEMMA_SPECIALS = {"<pad>": 3, "<eos>": 3, "<bos>": 3, "<unk>": 2, "<mask>": 4}
TOKENIZER_KEY = "tokenizer.ggml."


@functools.cache
def trained_sentencepiece() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A SentencePiece-style BPE vocabulary (pieces in rank order, a space spelled \u2581) and
    its merges (``"left right"``), trained on this repository's README."""
    import json

    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, trainers

    backend = Backend(models.BPE(byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    lines = (Path(__file__).parents[3] / "README.md").read_text().splitlines()
    backend.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1500, show_progress=False))
    vocabulary = backend.get_vocab()
    merges = json.loads(backend.to_str())["model"]["merges"]
    return tuple(sorted(vocabulary, key=vocabulary.__getitem__)), \
        tuple(" ".join(merge) for merge in merges)


def sentencepiece_metadata(arch: str) -> dict[str, Any]:
    """A file's SentencePiece metadata as llama.cpp writes it for ``arch`` (``gemma*``: Gemma's
    special tokens, else Llama's): special tokens, the 256 byte tokens, the pieces scored by
    rank, tokens of spaces stored as spaces, a control and a user-defined token; bos added, a
    chat template; no merges (the pieces' scores imply them)."""
    pieces, _ = trained_sentencepiece()
    specials = GEMMA_SPECIALS if arch.startswith("gemma") else LLAMA_SPECIALS
    tokens = {**specials, **{f"<0x{byte:02X}>": 6 for byte in range(256)},
              **dict.fromkeys(pieces, 1), "  ": 1, "    ": 1, "\n\n": 1,
              "<start_of_turn>": 3, "<think>": 4}
    ids = {token: index for index, token in enumerate(tokens)}
    key = TOKENIZER_KEY
    return {"general.architecture": arch, f"{key}model": "llama", f"{key}pre": "default",
            f"{key}tokens": list(tokens), f"{key}token_type": list(tokens.values()),
            f"{key}scores": [0.0 if kind != 1 else -float(index)
                             for index, kind in enumerate(tokens.values())],
            f"{key}bos_token_id": ids["<bos>" if "<bos>" in ids else "<s>"],
            f"{key}eos_token_id": ids["<eos>" if "<eos>" in ids else "</s>"],
            f"{key}unknown_token_id": ids["<unk>"],
            **({f"{key}padding_token_id": ids["<pad>"]} if "<pad>" in ids else {}),
            f"{key}add_bos_token": True, f"{key}add_eos_token": False,
            "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}


def write_tokenizer_gguf(metadata: Mapping[str, Any], path: Path) -> Path:
    """A GGUF of ``metadata``'s SentencePiece vocabulary (as :func:`sentencepiece_metadata`
    gives it) and one tensor."""
    key = TOKENIZER_KEY
    writer = gguf.GGUFWriter(str(path), metadata["general.architecture"])
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre(metadata[f"{key}pre"])
    writer.add_token_list(metadata[f"{key}tokens"])
    writer.add_token_scores(metadata[f"{key}scores"])
    writer.add_token_types(metadata[f"{key}token_type"])
    for name in ("bos", "eos", "unknown", "padding"):
        if f"{key}{name}_token_id" in metadata:
            writer.add_uint32(f"{key}{name}_token_id", metadata[f"{key}{name}_token_id"])
    writer.add_add_bos_token(metadata[f"{key}add_bos_token"])
    writer.add_add_eos_token(metadata[f"{key}add_eos_token"])
    writer.add_chat_template(metadata["tokenizer.chat_template"])
    writer.add_tensor("token_embd.weight", np.zeros((len(metadata[f"{key}tokens"]), 8),
                                                    dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
