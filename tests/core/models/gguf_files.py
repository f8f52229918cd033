"""Tiny GGUF files for the GGUF loader's tests, written the way llama.cpp writes them.

``write_tiny_gguf`` stores a random-weight Hugging Face Llama or Qwen2 model as llama.cpp's
``convert_hf_to_gguf.py`` would: llama.cpp tensor names, Llama's q/k rows permuted, 2-D weights
quantized, 1-D tensors in F32, and the tokenizer metadata of the bundled SmolLM2 GGUF (so the
model's vocabulary must be ``VOCAB_SIZE``). ``round_trip`` is the model such a file holds: what a
correct loader must reproduce. ``corrupt_copies`` spoils a file for the error tests.

gguf-py 0.19 quantizes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (and TQ1_0, TQ2_0, MXFP4)
but only dequantizes the K-quants, so Q4_K, Q5_K and Q6_K are encoded here (plain min/max
scales, not llama.cpp's search; the layout is exact, checked against gguf-py's ``dequantize``).
"""

from __future__ import annotations

import functools
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

VOCAB_SIZE = 49152  # the bundled SmolLM2 tokenizer's: every tiny model written here uses it
K_QUANTS = (QType.Q4_K, QType.Q5_K, QType.Q6_K)
WRITABLE = (QType.F32, QType.F16, QType.BF16, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1,
            QType.Q8_0, *K_QUANTS)
UNKNOWN_TYPE_ID = 0x7ABC  # no GGML type has this id
ARCHES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
          "qwen3": gguf.MODEL_ARCH.QWEN3}
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
    """Write ``hf_model`` (a ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``) to ``path`` as a GGUF:
    2-D weights in ``weight_type``, token_embd in ``embedding_type`` (default ``weight_type``),
    norms and biases in F32, no output.weight when the embeddings are tied, and every
    ``tokenizer.*`` field of ``tokenizer_from`` (default: the bundled SmolLM2 GGUF, whose
    vocabulary of ``VOCAB_SIZE`` the model must share). ``with_tokenizer=False`` leaves the
    tokenizer out (any vocab size; gguf-py opens the file in milliseconds instead of ~3 s).
    Each quantized row length must be a whole number of the type's blocks (32, or 256 for the
    K-quants). ``types``: the types of particular 2-D tensors, by llama.cpp name or its end
    (``attn_v.weight``: every layer's), as :data:`K_M_TYPES`."""
    config, arch = hf_model.config, _arch(hf_model)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}")
    _add_hparams(writer, config)
    writer.add_file_type(_file_type(weight_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if with_tokenizer:
        _add_tokenizer(writer, tokenizer_from or default_gguf(), config.vocab_size)
    for name, array, qtype in _gguf_tensors(hf_model, weight_type, embedding_type, types):
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


def _add_hparams(writer: gguf.GGUFWriter, config: Any) -> None:
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(_head_dim(config))


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
                  ) -> list[tuple[str, np.ndarray, QType]]:
    """(llama.cpp name, float32 array as stored, type) for each tensor of ``hf_model``."""
    config, arch = hf_model.config, _arch(hf_model)
    names = gguf.get_tensor_name_map(ARCHES[arch], config.num_hidden_layers)
    tensors = []
    for hf_name, param in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no llama.cpp name for {hf_name}")
        array = param.detach().float().numpy()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
            array = permute_rows(array, heads)
        qtype = QType.F32 if array.ndim == 1 else weight_type
        if name == "token_embd.weight" and embedding_type is not None:
            qtype = embedding_type
        qtype = next((t for key, t in (types or {}).items()
                      if array.ndim == 2 and (name == key or name.endswith(f".{key}"))), qtype)
        tensors.append((name, array, qtype))
    if config.rope_parameters.get("rope_type") == "llama3":
        tensors.append(("rope_freqs.weight", _llama3_rope_factors(config), QType.F32))
    return tensors


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


def quantize(array: np.ndarray, qtype: QType) -> np.ndarray:
    """``array`` (..., n) float32 in ``qtype``'s bytes (..., n // block * type_size); F32/F16
    stay float arrays. gguf-py's quantizer where it has one, the K-quant encoders below else."""
    if qtype not in K_QUANTS:
        return gguf.quants.quantize(array.astype(np.float32), qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        raise ValueError(f"rows of {array.shape[-1]} are not whole {qtype.name} blocks of {block}")
    blocks = array.astype(np.float32).reshape(-1, block)  # (n_blocks, 256)
    encoded = _q6_k(blocks) if qtype == QType.Q6_K else _q45_k(blocks, qtype == QType.Q5_K)
    return encoded.reshape(*array.shape[:-1], array.shape[-1] // block * type_size)


def dequantize(data: np.ndarray, qtype: QType) -> np.ndarray:
    """gguf-py's reference dequantizer (float32), for symmetry with ``quantize``."""
    return gguf.quants.dequantize(data, qtype).astype(np.float32)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def _q45_k(blocks: np.ndarray, five_bits: bool) -> np.ndarray:
    """Q4_K/Q5_K: d, dmin (f16), 8 6-bit (scale, min) pairs in 12 bytes, [qh 32 bytes], qs 128;
    each 32-value sub-block is d * scale * q - dmin * min."""
    top = 31 if five_bits else 15
    x = blocks.reshape(-1, 8, 32)
    low, high = np.minimum(x.min(-1), 0.0), x.max(-1)  # (n, 8)
    step, offset = (high - low) / top, -low
    d, dmin = _f16(step.max(-1, keepdims=True) / 63), _f16(offset.max(-1, keepdims=True) / 63)
    scales = np.clip(np.rint(_divide(step, d)), 0, 63).astype(np.uint8)
    mins = np.clip(np.rint(_divide(offset, dmin)), 0, 63).astype(np.uint8)
    q = _divide(x + (dmin * mins)[..., None], np.broadcast_to((d * scales)[..., None], x.shape))
    q = np.clip(np.rint(q), 0, top).astype(np.uint8)  # (n, 8, 32)
    packed = np.concatenate([scales[:, :4] | (scales[:, 4:] >> 4) << 6,
                             mins[:, :4] | (mins[:, 4:] >> 4) << 6,
                             (scales[:, 4:] & 0xF) | (mins[:, 4:] & 0xF) << 4], axis=1)
    pairs = (q & 0xF).reshape(-1, 4, 2, 32)  # sub-blocks 2j and 2j+1 share bytes
    qs = (pairs[:, :, 0] | pairs[:, :, 1] << 4).reshape(-1, 128)
    parts = [_f16_bytes(d), _f16_bytes(dmin), packed, qs]
    if five_bits:  # bit 4 of sub-block i's value l is bit i of qh[l]
        bits = (q >> 4) << np.arange(8, dtype=np.uint8)[None, :, None]
        parts.insert(3, np.bitwise_or.reduce(bits, axis=1))
    return np.concatenate(parts, axis=1)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K: ql 128 bytes (low nibbles), qh 64 (high 2 bits), 16 int8 scales, d (f16); each
    16-value sub-block is d * scale * (q - 32)."""
    x = blocks.reshape(-1, 16, 16)
    step = np.abs(x).max(-1) / 31  # (n, 16)
    d = _f16(step.max(-1, keepdims=True) / 127)
    scales = np.clip(np.rint(_divide(step, d)), 0, 127).astype(np.int8)
    q = _divide(x, np.broadcast_to((d * scales)[..., None], x.shape))
    q = (np.clip(np.rint(q), -32, 31) + 32).astype(np.uint8).reshape(-1, 256)
    halves = (q & 0xF).reshape(-1, 2, 2, 64)  # value h*128 + k*64 + b -> nibble k of byte h*64+b
    ql = (halves[:, :, 0] | halves[:, :, 1] << 4).reshape(-1, 128)
    high = (q >> 4).reshape(-1, 2, 4, 32) << np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    qh = np.bitwise_or.reduce(high, axis=2).reshape(-1, 64)
    return np.concatenate([ql, qh, scales.view(np.uint8), _f16_bytes(d)], axis=1)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8)  # (n, 1) -> (n, 2)


def round_trip(hf_model: PreTrainedModel, weight_type: QType,
               embedding_type: QType | None = None, types: Mapping[str, QType] | None = None
               ) -> PreTrainedModel:
    """A copy of ``hf_model`` holding exactly what ``write_tiny_gguf`` stores: every 2-D weight
    replaced by ``dequantize(quantize(w))``. A correct loader reproduces its logits."""
    model = type(hf_model)(hf_model.config).eval()
    model.load_state_dict(hf_model.state_dict())
    by_name = {name: (array, qtype) for name, array, qtype in
               _gguf_tensors(hf_model, weight_type, embedding_type, types)}
    names = gguf.get_tensor_name_map(ARCHES[_arch(hf_model)], hf_model.config.num_hidden_layers)
    with torch.no_grad():
        for hf_name, param in model.named_parameters():
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name not in by_name:
                continue  # a tied lm_head
            array, qtype = by_name[name]
            stored = dequantize(quantize(array, qtype), qtype).reshape(array.shape)
            if name.endswith(("attn_q.weight", "attn_k.weight")) and _arch(hf_model) == "llama":
                stored = unpermute_rows(stored, param.shape[0] // _head_dim(hf_model.config))
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
