"""A GGUF file read as it is: each tensor decoded from the file's memory map into a kernel's
layout, one tensor at a time, never the whole model in float.

- ``Q4_0``, ``Q4_1`` and ``Q4_K`` become :class:`Int4Blocks`: 4-bit codes in blocks of 32 along
  the input dimension, each block with a float32 scale and minimum (weight = code * scale +
  minimum), the input of :class:`core.models.quant.Int4Linear`. The conversion is lossless: a
  Q4_0 block is scale d and minimum -8d; a Q4_1 block is d and m; a Q4_K sub-block of 32 is
  d * sc and -dmin * m, products of a float16 and a 6-bit integer, exact in float32.
- ``F32``, ``F16`` and ``BF16`` become float32 tensors.
- Every other type gguf-py knows (``Q8_0``, ``Q5_*``, ``Q6_K``, ...) is dequantized by gguf-py,
  one tensor at a time, into float32; the model's weight format then applies to it.

The header is read by :mod:`core.models.gguf_header`; the block layouts are ggml's
(``ggml-common.h``); tensors are named as llama.cpp names them
(``blk.N.attn_q.weight``), and llama.cpp stores the query and key rows of its ``llama``
architecture permuted for its rotary embedding: :meth:`GGUFFile.linear` undoes that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import ModelLoadError
from core.models.formats import Format
from core.models.gguf_header import TensorInfo, read_header
from core.models.quant import INT4_GROUP_SIZE as BLOCK
from core.models.quant import Int4Blocks, Weight

FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")
FLOATS = ("F32", "F16", "BF16")
# what a file's linear weights run as under --isq auto: its own format where a kernel has it
NATIVE_FORMAT: dict[str, Format] = {"Q4_0": "int4", "Q4_1": "int4", "Q4_K": "int4",
                                    "Q8_0": "int8", "F16": "f16", "BF16": "bf16", "F32": "none"}


def _f16(raw: np.ndarray) -> np.ndarray:
    """Two bytes a value, as float32: (..., 2) uint8 -> (...)."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) bytes -> (..., 32) codes: the low nibbles are weights 0-15, the high 16-31."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def decode_q4_0(raw: np.ndarray) -> Int4Blocks:
    """(rows, bytes) of 18-byte blocks: float16 d, 16 bytes of codes; weight = d * (q - 8)."""
    blocks = raw.reshape(raw.shape[0], -1, 18)
    d = _f16(blocks[..., 0:2])
    return _blocks(_nibbles(blocks[..., 2:]), d, -8 * d)


def decode_q4_1(raw: np.ndarray) -> Int4Blocks:
    """(rows, bytes) of 20-byte blocks: float16 d and m, 16 bytes of codes; weight = d * q + m."""
    blocks = raw.reshape(raw.shape[0], -1, 20)
    return _blocks(_nibbles(blocks[..., 4:]), _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4]))


def decode_q4_k(raw: np.ndarray) -> Int4Blocks:
    """(rows, bytes) of 144-byte super-blocks of 256 weights: float16 d and dmin, 12 bytes of
    6-bit scales and minimums of the 8 sub-blocks, 128 bytes of codes. Sub-block j's weight is
    d * sc[j] * q - dmin * m[j]; each 32 bytes of codes hold sub-blocks 2i (low nibbles) and
    2i + 1 (high nibbles)."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, 144)
    d, dmin = _f16(blocks[..., 0:2])[..., None], _f16(blocks[..., 2:4])[..., None]
    sc, m = _scales_k4(blocks[..., 4:16])
    qs = blocks[..., 16:].reshape(rows, -1, 4, 32)
    codes = np.stack([qs & 15, qs >> 4], axis=3)  # (rows, supers, 4, low/high, 32)
    return _blocks(codes.reshape(rows, -1, BLOCK), (d * sc).reshape(rows, -1),
                   (-dmin * m).reshape(rows, -1))


def _scales_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 12) bytes -> the 8 sub-blocks' 6-bit scales and minimums, as float32 (..., 8): the
    first four in the low 6 bits of bytes 0-3 and 4-7, the last four in the nibbles of bytes
    8-11 with their top 2 bits in the top bits of bytes 0-3 and 4-7."""
    p = packed.astype(np.uint8)
    low_sc, low_m = p[..., 0:4] & 63, p[..., 4:8] & 63
    high_sc = (p[..., 8:12] & 15) | ((p[..., 0:4] >> 6) << 4)
    high_m = (p[..., 8:12] >> 4) | ((p[..., 4:8] >> 6) << 4)
    return (np.concatenate([low_sc, high_sc], -1).astype(np.float32),
            np.concatenate([low_m, high_m], -1).astype(np.float32))


def _blocks(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray) -> Int4Blocks:
    return Int4Blocks(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.uint8)),
                      torch.from_numpy(np.ascontiguousarray(scales, dtype=np.float32)),
                      torch.from_numpy(np.ascontiguousarray(mins, dtype=np.float32)))


DECODERS = {"Q4_0": decode_q4_0, "Q4_1": decode_q4_1, "Q4_K": decode_q4_k}


class GGUFFile:
    """One GGUF file, memory-mapped; its tensors are decoded on request, each into memory of
    its own, so the map goes with this object."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._map = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot map the file ({exc})") from exc
        header = read_header(path, self._map.data)
        self.metadata, self._tensors = header.metadata, header.tensors
        self.arch = str(self.metadata.get("general.architecture") or "")

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` the metadata describes (llama.cpp's ``llama`` and
        ``qwen2`` keys), from the header alone."""
        arch, meta = self.arch, self.metadata

        def key(name: str, default: Any = None) -> Any:
            return meta.get(f"{arch}.{name}", default)

        hidden, heads = key("embedding_length"), key("attention.head_count")
        config = {
            "model_type": arch, "architectures": [f"{arch.capitalize()}ForCausalLM"],
            "vocab_size": int(self._tensor("token_embd.weight").shape[1]),
            "hidden_size": hidden, "intermediate_size": key("feed_forward_length"),
            "num_hidden_layers": key("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": key("attention.head_count_kv", heads),
            "head_dim": key("attention.key_length") or key("rope.dimension_count")
            or hidden // heads,
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
            "rope_theta": key("rope.freq_base", 10000.0),
            "max_position_embeddings": key("context_length", 2048),
            "tie_word_embeddings": not self.has("output.weight"),
            "attention_bias": self.has("blk.0.attn_q.bias"),
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        }
        scaling = key("rope.scaling.type")
        if scaling not in (None, "none"):
            config["rope_scaling"] = {"rope_type": scaling,
                                      "factor": key("rope.scaling.factor", 1.0)}
        return config

    @property
    def rotary_permuted(self) -> bool:
        """llama.cpp stores the query and key rows of its ``llama`` architecture permuted."""
        return self.arch == "llama"

    def has(self, name: str) -> bool:
        return name in self._tensors

    def type_of(self, name: str) -> str:
        return self._tensor(name).type_name

    def native_format(self) -> Format:
        """The weight format of the file's linear weights (the most common type among the
        decoder layers' 2-D tensors), as :data:`NATIVE_FORMAT` maps it; int8 for other types."""
        types = [t.type_name for name, t in self._tensors.items()
                 if name.startswith("blk.") and len(t.shape) == 2]
        if not types:
            return "none"
        common = max(set(types), key=types.count)
        return NATIVE_FORMAT.get(common, "int8")

    def tensor(self, name: str) -> torch.Tensor:
        """A float32 tensor, in PyTorch's (out, in) order; a copy, not a view of the map."""
        kind = self.type_of(name)
        if kind in DECODERS:
            return self.blocks(name).dequantize()
        shape = tuple(reversed(self._tensor(name).shape))
        raw = self._raw(name)
        if kind == "BF16":
            floats = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif kind == "F16":
            floats = raw.view(np.float16).astype(np.float32)
        elif kind == "F32":
            floats = raw.view(np.float32).copy()
        else:
            floats = self._dequantize(name)
        return torch.from_numpy(floats.reshape(shape))

    def linear(self, names: Sequence[str], permute: Sequence[int | None]) -> Weight:
        """The weights of ``names`` with their rows one after another (a fused projection):
        :class:`Int4Blocks` when all are 4-bit, else float32. ``permute``: for each, the head
        count whose rotary row order llama.cpp permuted, or None."""
        orders = [None if heads is None else _unpermute(self._rows(name), heads)
                  for name, heads in zip(names, permute, strict=True)]
        if all(self.type_of(name) in FOUR_BIT for name in names):
            blocks = [self.blocks(name) for name in names]
            return Int4Blocks.cat([b if order is None else b.rows(order)
                                   for b, order in zip(blocks, orders, strict=True)])
        floats = [self.tensor(name) for name in names]
        return torch.cat([f if order is None else f[order]
                          for f, order in zip(floats, orders, strict=True)])

    def blocks(self, name: str) -> Int4Blocks:
        """A 4-bit tensor's codes, scales and minimums, decoded from the map."""
        return DECODERS[self.type_of(name)](self._raw(name).reshape(self._rows(name), -1))

    def _rows(self, name: str) -> int:
        return self._tensor(name).rows

    def _raw(self, name: str) -> np.ndarray:
        """The tensor's bytes: a view of the map."""
        info = self._tensor(name)
        return self._map[info.offset:info.offset + info.nbytes]

    def _tensor(self, name: str) -> TensorInfo:
        if name not in self._tensors:
            raise ModelLoadError(f"{self.path}: no tensor {name!r} (architecture {self.arch!r})")
        return self._tensors[name]

    def _dequantize(self, name: str) -> np.ndarray:
        from gguf import GGMLQuantizationType, quants

        kind = self.type_of(name)
        raw = self._raw(name).reshape(self._rows(name), -1)
        try:
            return np.asarray(quants.dequantize(raw, GGMLQuantizationType[kind]),
                              dtype=np.float32)
        except NotImplementedError as exc:
            raise ModelLoadError(f"{self.path}: tensor {name} has the quantization type "
                                 f"{kind}, which cannot be read here") from exc


def _unpermute(rows: int, heads: int) -> torch.Tensor:
    """The row order that undoes llama.cpp's rotary permutation of a query or key weight, whose
    rows it stores as (head, pair, half) instead of (head, half, pair)."""
    return torch.arange(rows).reshape(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
