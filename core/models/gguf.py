"""A GGUF file read as it is: each tensor read from the file and decoded into a kernel's
layout, one tensor at a time, never the whole model in float.

- ``Q4_0``, ``Q4_1`` and ``Q4_K`` become :class:`Int4Blocks`, the input of
  :class:`core.models.quant.Int4Linear` (and of :class:`core.models.quant.Int4Embedding` for
  the token table): 4-bit codes in blocks of 32 along the input dimension, each block with a
  scale and a minimum (weight = code * scale + minimum). Lossless: a Q4_0 or Q4_1 block's code
  bytes and float16 scale (and minimum; Q4_0's is -8 times its scale, not stored) are taken as
  they are, as many bytes a weight as in the file; a Q4_K sub-block of 32 is d * sc and
  -dmin * m in float32, products of a float16 and a 6-bit integer, exact, and its 6-bit codes
  and float16 d and dmin come along, which the 4-bit kernel reads instead (as many bytes a
  weight as in the file, near enough).
- ``Q8_0``, ``Q5_0``, ``Q5_1``, ``Q5_K`` and ``Q6_K`` become :class:`Int8Blocks`, the input of
  :class:`core.models.quant.Int8BlockLinear` (and :class:`core.models.quant.Int8Embedding`): a
  byte a code in blocks of 32, each with a scale (Q6_K: two, one a 16) and, in Q5_1 and Q5_K, a
  minimum. Lossless: Q8_0's codes and float16 scales as they are, Q5_0's q - 16 and Q5_1's q
  with their float16 scale (and minimum); Q5_K's d * sc and -dmin * m and Q6_K's d * sc in
  float32, products of a float16 and a 6- or 8-bit integer, exact. A Q6_K's 8-bit sc and
  float16 d come along, and the layer keeps those and its codes in 6 bits (``q6_matmul``: as
  many bytes a weight as in the file). Written straight into a layer's tiles (below), Q5_0,
  Q5_1 and Q5_K keep 5 bits a code and the file's scales (``q5_matmul``, ``q5k_matmul``).
- ``F32``, ``F16`` and ``BF16`` become float32 tensors.
- Every other type gguf-py knows (``Q2_K``, ``Q3_K``, ``IQ*``, ...) is dequantized by gguf-py,
  one tensor at a time, into float32; the model's weight format then applies to it.

In the file's own format (:meth:`GGUFFile.native_format`, what ``--isq auto`` means for it)
every tensor runs as the file holds it: a Q4_K_M file's Q4_K tensors on the 4-bit kernel, its
Q6_K ones on the 6-bit kernel, and a projection fused of both part by part (:class:`MixedBlocks`)
(:meth:`GGUFFile.linear`). Where the kernels are built, :meth:`GGUFFile.linear` hands a
projection of Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q8_0 or Q6_K tensors over undecoded
(:class:`FileBlocks`): a layer on a kernel has ``gguf_tiles`` (``gguf_decode.cpp``) write the
file's bytes straight into its tiles, one pass (a 1B Q4_K_M loaded in 1.1-1.3 s instead of
2.5-2.9, its peak RSS 300 MB lower); anything else decodes them into the blocks above.

The header is read by :mod:`core.models.gguf_header`, the config it describes by
:mod:`core.models.gguf_config`; the block layouts are ggml's (``ggml-common.h``); tensors are
named as llama.cpp names them (``blk.N.attn_q.weight``), and llama.cpp stores the query and key
rows of its ``llama`` and ``granite`` architectures permuted for its rotary embedding:
:meth:`GGUFFile.linear` undoes that. A mixture of experts' weights are 3-D tensors (experts,
out, in) read one expert at a time (:meth:`GGUFFile.expert_linear`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from core.errors import ModelLoadError
from core.models import pages
from core.models.blocks import (
    BLOCK,
    PAIR_SHIFTS,
    SUPER_BLOCK,
    TILE_ROWS,
    FileBlocks,
    Int4Blocks,
    Int8Blocks,
    MixedBlocks,
    TileKernel,
    Tiles,
    Weight,
)
from core.models.formats import Format
from core.models.gguf_config import ARCHITECTURES, hf_config
from core.models.gguf_header import Header, TensorInfo, map_header

# the format of each type's own kernel: a file's most common type names its format
NATIVE_FORMAT: dict[str, Format] = {"Q4_0": "int4", "Q4_1": "int4", "Q4_K": "int4",
                                    "Q5_0": "int5", "Q5_1": "int5", "Q5_K": "int5",
                                    "Q8_0": "int8", "Q6_K": "int8",
                                    "F16": "f16", "BF16": "bf16", "F32": "none"}
Blocks = TypeVar("Blocks", Int4Blocks, Int8Blocks, Int4Blocks | Int8Blocks)


def _blocks_of(raw: np.ndarray, block_bytes: int) -> torch.Tensor:
    """(rows, bytes) -> (rows, blocks, block_bytes) uint8, on the same memory."""
    return torch.from_numpy(raw).view(raw.shape[0], -1, block_bytes)


def _words(raw: np.ndarray, block_bytes: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """(rows, bytes) -> (rows, blocks, words a block) of ``dtype``: a block's bytes, a word of
    them an operation (little-endian, as the file)."""
    words = torch.from_numpy(raw).view(dtype)
    return words.view(raw.shape[0], -1, block_bytes // words.element_size())


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Two bytes a value: (..., 2) uint8 -> (...) float16."""
    return raw.contiguous().view(torch.float16).squeeze(-1)


def decode_q4_0(raw: np.ndarray) -> Int4Blocks:
    """(rows, bytes) of 18-byte blocks: float16 d, 16 bytes of codes; weight = d * (q - 8)
    (no minimums: -8 d is implied)."""
    blocks = _blocks_of(raw, 18)
    return Int4Blocks(blocks[..., 2:], _f16(blocks[..., 0:2]), None)


def decode_q4_1(raw: np.ndarray) -> Int4Blocks:
    """(rows, bytes) of 20-byte blocks: float16 d and m, 16 bytes of codes; weight = d * q + m."""
    blocks = _blocks_of(raw, 20)
    return Int4Blocks(blocks[..., 4:], _f16(blocks[..., 0:2]),
                      _f16(blocks[..., 2:4]))


LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F  # of each byte of a word


def _built(op: str) -> bool:
    """Whether :mod:`core.models.kernels` is loaded (the model runner loads it before it reads
    a file) with ``op``: ``gguf_decode.cpp`` decodes Q4_K and Q6_K in one pass to the blocks
    computed below with torch, which the tests hold it to and which run where it is not."""
    return hasattr(torch.ops.infermcp, op)


def decode_q4_k(raw: np.ndarray) -> Int4Blocks:
    """(rows, bytes) of 144-byte super-blocks of 256 weights: float16 d and dmin, 12 bytes of
    6-bit scales and minimums of the 8 sub-blocks, 128 bytes of codes. Sub-block j's weight is
    d * sc[j] * q - dmin * m[j]; each 32 bytes of codes hold sub-blocks 2i (low nibbles) and
    2i + 1 (high nibbles)."""
    rows = raw.shape[0]
    if _built("q4k_decode"):
        return Int4Blocks.from_q4_k(*torch.ops.infermcp.q4k_decode(torch.from_numpy(raw)))
    blocks = _blocks_of(raw, 144)
    sc, m = _scales_k4(_words(raw, 144)[..., 1:4])
    # the codes as 8-byte words (a super-block is 18, its codes the last 16), eight bytes an
    # operation: this part ran 2.3x sooner than byte by byte
    qs = _words(raw, 144, torch.int64)[..., 2:].reshape(rows, -1, 4, 4)
    first, last = qs[..., :2], qs[..., 2:]  # codes 0-15 and 16-31 of both sub-blocks
    sub_2i = (first & LOW_NIBBLES) | ((last & LOW_NIBBLES) << 4)
    sub_2i1 = ((first >> 4) & LOW_NIBBLES) | (last & ~LOW_NIBBLES)
    packed = torch.stack([sub_2i, sub_2i1], dim=3).view(torch.uint8)
    return Int4Blocks.from_q4_k(
        packed.reshape(rows, -1, BLOCK // 2),
        torch.stack([sc, m], dim=-1).to(torch.uint8).reshape(rows, -1, 2),
        blocks[..., 0:4].contiguous().view(torch.float16))  # d, dmin


def _scales_k4(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 3) int32 words (12 bytes) -> the 8 sub-blocks' 6-bit scales and minimums, as
    float32 (..., 8): the first four in the low 6 bits of bytes 0-3 and 4-7, the last four in
    the nibbles of bytes 8-11 with their top 2 bits in the top bits of bytes 0-3 and 4-7. Four
    bytes an operation (for a 1B model's MLP weight: 1.4 ms, where a byte at a time took 4.4)."""
    sc_low, m_low, nibbles = p[..., 0:1], p[..., 1:2], p[..., 2:3]
    high_sc = (nibbles & 0x0F0F0F0F) | (((sc_low >> 6) & 0x03030303) << 4)
    high_m = ((nibbles >> 4) & 0x0F0F0F0F) | (((m_low >> 6) & 0x03030303) << 4)
    sc = torch.cat([sc_low & 0x3F3F3F3F, high_sc], -1).view(torch.uint8)
    m = torch.cat([m_low & 0x3F3F3F3F, high_m], -1).view(torch.uint8)
    return sc.float(), m.float()


def decode_q8_0(raw: np.ndarray) -> Int8Blocks:
    """(rows, bytes) of 34-byte blocks: float16 d, 32 signed 8-bit codes; weight = d * q."""
    blocks = _blocks_of(raw, 34)
    return Int8Blocks(blocks[..., 2:].view(torch.int8), _f16(blocks[..., 0:2]))


def decode_q5_0(raw: np.ndarray) -> Int8Blocks:
    """(rows, bytes) of 22-byte blocks: float16 d, the codes' fifth bits (4 bytes), their low
    nibbles (16 bytes); weight = d * (q - 16): codes q - 16 with d, Q8_0's form."""
    blocks = _blocks_of(raw, 22)
    q = _five_bits(blocks[..., 2:6], blocks[..., 6:])
    return Int8Blocks(q.view(torch.int8) - 16, _f16(blocks[..., 0:2]))


def decode_q5_1(raw: np.ndarray) -> Int8Blocks:
    """(rows, bytes) of 24-byte blocks: float16 d and m, then as Q5_0; weight = d * q + m."""
    blocks = _blocks_of(raw, 24)
    q = _five_bits(blocks[..., 4:8], blocks[..., 8:])
    return Int8Blocks(q.view(torch.int8), _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4]))


_BITS = torch.arange(8, dtype=torch.uint8)


def _five_bits(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """(..., 4) and (..., 16) bytes -> (..., 32) codes 0..31 in order: code j's low nibble is
    byte j % 16's (low for j < 16, high after), its fifth bit bit j of qh (a little-endian
    32-bit word)."""
    high = (qh.unsqueeze(-1) >> _BITS) & 1  # (..., 4, 8): bit j of the word
    return torch.cat([qs & 15, qs >> 4], dim=-1) | (high.flatten(-2) << 4)


def decode_q5_k(raw: np.ndarray) -> Int8Blocks:
    """(rows, bytes) of 176-byte super-blocks of 256 weights: float16 d and dmin, 12 bytes of
    the 8 sub-blocks' 6-bit scales and minimums (as Q4_K), 32 bytes of fifth bits (bit j of
    byte l: sub-block j's code l), 128 bytes of low nibbles (as Q4_K's codes). Sub-block j's
    weight is d * sc[j] * q - dmin * m[j]: codes q with float32 d * sc and -dmin * m, exact."""
    rows = raw.shape[0]
    blocks = _blocks_of(raw, 176)
    d = _f16(blocks[..., 0:2]).float().unsqueeze(-1)
    dmin = _f16(blocks[..., 2:4]).float().unsqueeze(-1)
    sc, m = _scales_k4(_words(raw, 176)[..., 1:4])
    qs = blocks[..., 48:].reshape(rows, -1, 4, 1, 32)
    low = torch.cat([qs & 15, qs >> 4], dim=3)  # (rows, super-blocks, 4, 2, 32): 2i, 2i + 1
    high = (blocks[..., 16:48].reshape(rows, -1, 1, 32) >> _BITS.view(8, 1)) & 1
    q = low.reshape(rows, -1, 8, BLOCK) | (high << 4)
    return Int8Blocks(q.reshape(rows, -1, BLOCK).view(torch.int8), (d * sc).reshape(rows, -1),
                      (-dmin * m).reshape(rows, -1))


def decode_q6_k(raw: np.ndarray) -> Int8Blocks:
    """(rows, bytes) of 210-byte super-blocks of 256 weights: 128 bytes of low nibbles, 64 of
    high 2-bit pairs, 16 signed 8-bit scales (one per 16 weights), float16 d. Weight
    h * 128 + k * 64 + i takes nibble k of low byte h * 64 + i; weight h * 128 + s * 32 + i pair s
    of high byte h * 32 + i. Weight = d * sc * (q - 32): codes q - 32 with float32 d * sc, two
    a block of 32, exact."""
    rows = raw.shape[0]
    if _built("q6k_decode"):
        return Int8Blocks.from_q6_k(*torch.ops.infermcp.q6k_decode(torch.from_numpy(raw)))
    blocks = _blocks_of(raw, 210)
    ql = blocks[..., :128].reshape(rows, -1, 2, 1, 64)
    low = torch.cat([ql & 15, ql >> 4], dim=3)  # (rows, super-blocks, h, k, i)
    high = (blocks[..., 128:192].reshape(rows, -1, 2, 1, 32) >> PAIR_SHIFTS.view(4, 1)) & 3
    q = low.reshape(rows, -1, 256) | (high.reshape(rows, -1, 256) << 4)
    sc = blocks[..., 192:208].contiguous().view(torch.int8)  # (rows, super-blocks, 16)
    return Int8Blocks.from_q6_k(q.view(torch.int8).reshape(rows, -1, BLOCK) - 32,
                                sc.reshape(rows, -1), _f16(blocks[..., 208:210]))


def _decoded(decode: Callable[[np.ndarray], Blocks], raw: np.ndarray) -> Blocks:
    """``decode(raw)``, a chunk of rows at a time where the decoder computes (it does not just
    view the file's bytes): a K-quant's unpacking makes several temporaries of the codes' size,
    and a 1B model's Q6_K embedding table peaked 450 MB above its 126 MB decoded. The chunks
    are written into the whole's tensors as they come."""
    step = max(1, DECODE_CHUNK_BYTES // max(1, raw.shape[1]))
    if decode in VIEWING or raw.shape[0] <= step:
        return decode(raw)
    first = decode(raw[:step])
    whole: dict[str, Any] = {field.name: _rows_like(getattr(first, field.name), raw.shape[0])
                             for field in dataclasses.fields(first)}
    for start in range(0, raw.shape[0], step):
        chunk = first if start == 0 else decode(raw[start:start + step])
        for name, out in whole.items():
            if out is not None:
                out[start:start + step] = getattr(chunk, name)
    return type(first)(**whole)


def _rows_like(part: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    return None if part is None else part.new_empty((rows, *part.shape[1:]))


DECODERS = {"Q4_0": decode_q4_0, "Q4_1": decode_q4_1, "Q4_K": decode_q4_k}
DECODERS_8 = {"Q8_0": decode_q8_0, "Q5_0": decode_q5_0, "Q5_1": decode_q5_1,
              "Q5_K": decode_q5_k, "Q6_K": decode_q6_k}
# the decoders whose blocks are views of the file's bytes (nothing to bound)
VIEWING = frozenset({decode_q4_0, decode_q4_1, decode_q8_0})
DECODE_CHUNK_BYTES = 16 << 20  # of a file's tensor, decoded at a time by the others


@functools.lru_cache(maxsize=8)
def _header(path: Path, size: int, mtime_ns: int) -> Header:
    """A file's header, parsed once per version of the file (0.4 s for a 1B model's, most of
    it stepping over the tokenizer's strings): the loader, the runner and /re_isq all ask."""
    return map_header(path)  # the map closes here: tensors are read from maps of their own


class GGUFFile:
    """One GGUF file: its header, read through a memory map that closes once it is read; its
    tensors, decoded on request from a map of their bytes. Blocks (:meth:`blocks`,
    :meth:`blocks8`) may still be views of that map, codes strided between the scales: whoever
    keeps them copies them (the layers' tiles, the embeddings); float tensors are their own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            stat = path.stat()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read the file ({exc})") from exc
        header = _header(path, stat.st_size, stat.st_mtime_ns)
        self.metadata, self._tensors = header.metadata, header.tensors
        self.arch = str(self.metadata.get("general.architecture") or "")

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` the metadata describes
        (:func:`core.models.gguf_config.hf_config`)."""
        return hf_config(self)

    @property
    def rotary_permuted(self) -> bool:
        """Whether llama.cpp stores the query and key rows permuted (``llama``, ``granite``)."""
        spec = ARCHITECTURES.get(self.arch)
        return spec is not None and spec.permuted

    def has(self, name: str) -> bool:
        return name in self._tensors

    def type_of(self, name: str) -> str:
        return self._tensor(name).type_name

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape in PyTorch's order (out, in)."""
        return tuple(reversed(self._tensor(name).shape))

    def native_format(self) -> Format:
        """The file's own weight format, what ``--isq auto`` means for it: its most common type
        among the decoder layers' 2-D and 3-D (expert) tensors, as :data:`NATIVE_FORMAT` maps
        it (int8 for other types). In it the tensors of other types keep their forms too (a
        Q4_K_M file's Q6_K ones, under int4, stay 6-bit: :func:`core.models.quant.build_linear`);
        so it names what most of the weights run as, e.g. int4 for Q4_K_M and int5 for
        Q5_K_M."""
        types = [t.type_name for name, t in self._tensors.items()
                 if name.startswith("blk.") and len(t.shape) in (2, 3)]
        if not types:
            return "none"
        common = max(set(types), key=types.count)
        return NATIVE_FORMAT.get(common, "int8")

    def tensor(self, name: str, expert: int | None = None) -> torch.Tensor:
        """A float32 tensor, in PyTorch's (out, in) order, in memory of its own (of a 3-D
        expert tensor, ``expert``'s (out, in) slice alone)."""
        kind = self.type_of(name)
        if kind in DECODERS:
            return self.blocks(name, expert).dequantize()
        if kind in DECODERS_8:
            return self.blocks8(name, expert).dequantize()
        shape = self.shape(name)[0 if expert is None else 1:]
        raw = self._raw(name, expert)
        if kind == "BF16":
            floats = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif kind == "F16":
            floats = raw.view(np.float16).astype(np.float32)
        elif kind == "F32":
            floats = raw.view(np.float32).copy()  # its own memory, not the map's
        else:
            floats = self._dequantize(name, expert)
        return torch.from_numpy(floats.reshape(shape))

    def linear(self, names: Sequence[str], permute: Sequence[int | None]) -> Weight:
        """The weights of ``names`` with their rows one after another (a fused projection):
        :class:`Int4Blocks` when all are 4-bit, :class:`Int8Blocks` when all are in blocks
        and some are not 4-bit, else float32. ``permute``: for each, the head count whose
        rotary row order llama.cpp permuted, or None."""
        orders = [None if heads is None else _unpermute(self._rows(name), heads)
                  for name, heads in zip(names, permute, strict=True)]
        return self._fused(names, orders, None)

    def expert_linear(self, names: Sequence[str], expert: int) -> Weight:
        """Expert ``expert``'s weights in the 3-D expert tensors ``names`` (llama.cpp's
        ``ffn_gate_exps``: (experts, out, in)), rows one after another, in the forms
        :meth:`linear` gives; only that expert's bytes are read: its rows lie together, and
        quantized rows are whole blocks."""
        return self._fused(names, [None] * len(names), expert)

    def _fused(self, names: Sequence[str], orders: list[torch.Tensor | None],
               expert: int | None) -> Weight:
        kinds = [self.type_of(name) for name in names]
        # an expert's parts of more than one type meet in one form (_decoded): a mixture's
        # experts are alike
        if _built("gguf_tiles") and all(k in TILE_KERNELS for k in kinds) and (
                expert is None or len(set(kinds)) == 1):
            # each run of parts of one type written by gguf_tiles when its layer takes it
            runs = [list(run) for _, run in itertools.groupby(
                zip(names, orders, kinds, strict=True), lambda part: part[2])]
            parts = tuple(self._file_blocks([n for n, _, _ in run], [o for _, o, _ in run],
                                            expert) for run in runs)
            return parts[0] if len(parts) == 1 else MixedBlocks(parts)
        return self._decoded(names, orders, expert)

    def _file_blocks(self, names: list[str], orders: list[torch.Tensor | None],
                     expert: int | None) -> FileBlocks:
        """Tensors of one type (or an expert's slices of them), rows one after another, as
        the file holds them."""
        kind = self.type_of(names[0])
        rows = sum(self._rows(name, expert) for name in names)
        shape = (rows, self.shape(names[0])[-1])
        four = kind in DECODERS

        def decoded() -> Int4Blocks | Int8Blocks:
            if four:
                return Int4Blocks.cat(_reordered([self.blocks(n, expert) for n in names],
                                                 orders))
            return Int8Blocks.cat(_reordered([self.blocks8(n, expert) for n in names], orders))

        return FileBlocks(Int4Blocks if four else Int8Blocks, shape, decoded, lambda: _tiles(
            kind, [self._rows_of(name, expert) for name in names], orders, shape),
            TILE_KERNELS[kind])

    def _decoded(self, names: Sequence[str], orders: list[torch.Tensor | None],
                 expert: int | None) -> Weight:
        kinds = [self.type_of(name) for name in names]
        if all(kind in DECODERS for kind in kinds):
            return Int4Blocks.cat(_reordered([self.blocks(name, expert) for name in names],
                                             orders))
        if all(kind in DECODERS or kind in DECODERS_8 for kind in kinds):
            # Mixed parts (a Q4_K_M's Q4_K query and key beside its Q6_K value) stay in their
            # forms, each run of alike parts on its own kernel: a 1B Llama's q/k/v reads 3.8 MB
            # a token so, 8.5 MB in one 8-bit form (1.375 bytes a weight for the 4-bit rows).
            # A mixture of experts' parts meet in that one form (its experts' layers are alike).
            parts = _reordered([self.blocks8(name, expert) if kind in DECODERS_8
                                else self.blocks(name, expert)
                                for name, kind in zip(names, kinds, strict=True)], orders)
            runs = [list(run) for _, run in itertools.groupby(parts, type)]  # alike parts
            mixed = MixedBlocks(tuple(
                Int4Blocks.cat(run) if isinstance(run[0], Int4Blocks)  # type: ignore[arg-type]
                else Int8Blocks.cat(run) for run in runs))  # type: ignore[arg-type]
            return mixed if len(mixed.parts) > 1 and expert is None else mixed.merged()
        floats = [self.tensor(name, expert) for name in names]
        return torch.cat([f if order is None else f[order]
                          for f, order in zip(floats, orders, strict=True)])

    def blocks(self, name: str, expert: int | None = None) -> Int4Blocks:
        """A 4-bit tensor's codes, scales and minimums (or one expert's), decoded from the
        file."""
        return _decoded(DECODERS[self.type_of(name)], self._rows_of(name, expert))

    def blocks8(self, name: str, expert: int | None = None) -> Int8Blocks:
        """A Q8_0, Q5_0, Q5_1, Q5_K or Q6_K tensor's codes, scales (and minimums), or one
        expert's, decoded from the file."""
        return _decoded(DECODERS_8[self.type_of(name)], self._rows_of(name, expert))

    def _rows(self, name: str, expert: int | None = None) -> int:
        """How many rows the tensor has (an expert of a 3-D one: its second dimension's)."""
        info = self._expert_tensor(name, expert)
        return info.rows if expert is None else info.shape[1]

    def _expert_tensor(self, name: str, expert: int | None) -> TensorInfo:
        """The tensor's entry, checked to hold ``expert`` (None: the whole tensor)."""
        info = self._tensor(name)
        if expert is not None and (len(info.shape) != 3 or not 0 <= expert < info.shape[2]):
            raise ModelLoadError(f"{self.path}: {name} (shape {self.shape(name)}) has no "
                                 f"expert {expert}")
        return info

    def _rows_of(self, name: str, expert: int | None) -> np.ndarray:
        """(rows, bytes a row) of the tensor or of one expert's slice."""
        return self._raw(name, expert).reshape(self._rows(name, expert), -1)

    def _raw(self, name: str, expert: int | None = None) -> np.ndarray:
        """The tensor's bytes (or expert ``expert``'s), mapped from the file, not read: the
        decoders take them straight from the page cache, one copy fewer (a 1B model loaded
        0.8 s sooner). The map lasts as long as the array: only the tensor being converted
        counts in this process's memory, not the whole file."""
        info = self._expert_tensor(name, expert)
        offset, nbytes = info.offset, info.nbytes
        if expert is not None:
            nbytes //= info.shape[2]
            offset += expert * nbytes
        # copy-on-write: writable for torch.from_numpy, yet nothing is ever written back
        return np.memmap(self.path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))

    def _tensor(self, name: str) -> TensorInfo:
        if name not in self._tensors:
            raise ModelLoadError(f"{self.path}: no tensor {name!r} (architecture {self.arch!r})")
        return self._tensors[name]

    def _dequantize(self, name: str, expert: int | None = None) -> np.ndarray:
        from gguf import GGMLQuantizationType, quants

        kind = self.type_of(name)
        raw = self._rows_of(name, expert)
        try:
            return np.asarray(quants.dequantize(raw, GGMLQuantizationType[kind]),
                              dtype=np.float32)
        except NotImplementedError as exc:
            raise ModelLoadError(f"{self.path}: tensor {name} has the quantization type "
                                 f"{kind}, which cannot be read here") from exc


# the kernel each type's tensors are written for by gguf_tiles
TILE_KERNELS: dict[str, TileKernel] = {
    "Q4_0": "q4", "Q4_1": "q4", "Q4_K": "q4k", "Q5_0": "q5", "Q5_1": "q5", "Q5_K": "q5k",
    "Q8_0": "q8", "Q6_K": "q6"}


def _tiles(kind: str, parts: list[np.ndarray], orders: list[torch.Tensor | None],
           shape: tuple[int, int]) -> Tiles:
    """The (rows, bytes) ``parts`` of type ``kind``, each in its row order, one after another
    in the layout of their kernel (:class:`Tiles`), written by ``gguf_tiles``."""
    rows, columns = shape
    tiles, blocks, supers = -(-rows // TILE_ROWS), columns // BLOCK, columns // SUPER_BLOCK
    new, u8, f16 = pages.empty, torch.uint8, torch.float16  # zeroed: padding rows' too
    unused = torch.empty(0)
    kernel = TILE_KERNELS[kind]
    code_bytes = 160 if kernel in ("q5", "q5k") else 128  # the 5-bit ones: fifth bits after
    if kernel in ("q4", "q5"):
        scales = new((tiles, blocks, TILE_ROWS), f16)
        mins = new((tiles, blocks, TILE_ROWS), f16) if kind in ("Q4_1", "Q5_1") \
            else torch.empty(0, dtype=f16)
        out = Tiles(kernel, shape, new((tiles, blocks, code_bytes), u8), scales, mins,
                    unused, unused)
        written = [out.codes, scales, *([mins] if mins.numel() else [])]
    elif kernel in ("q4k", "q5k"):
        out = Tiles(kernel, shape, new((tiles, blocks, code_bytes), u8), unused, unused,
                    new((tiles, blocks, 2, TILE_ROWS), u8),
                    new((tiles, supers, 2, TILE_ROWS), f16))
        written = [out.codes, out.sub_scales, out.super_scales]
    elif kernel == "q8":
        out = Tiles("q8", shape, new((tiles, blocks, 256), torch.int8),
                    new((tiles, blocks, TILE_ROWS), f16), torch.empty(0, dtype=f16),
                    unused, unused)
        written = [out.codes, out.scales]
    else:
        out = Tiles("q6", shape, new((tiles, blocks, 192), u8),
                    new((tiles, 2 * blocks, TILE_ROWS), torch.int8), unused, unused,
                    new((tiles, supers, TILE_ROWS), f16))
        written = [out.codes, out.scales, out.super_scales]
        if rows % TILE_ROWS:  # padding rows' codes 32, weights 0, as q6_pack makes them
            out.codes[-1, :, 128:] = 0b10101010
    first = 0
    for raw, order in zip(parts, orders, strict=True):
        torch.ops.infermcp.gguf_tiles(kind, torch.from_numpy(raw), torch.empty(0, dtype=torch.long)
                                      if order is None else order, first, written)
        first += raw.shape[0]
    return out


def _reordered(parts: list[Blocks], orders: list[torch.Tensor | None]) -> list[Blocks]:
    """Each part's rows in ``order`` (None: as they are)."""
    return [part if order is None else part.rows(order)
            for part, order in zip(parts, orders, strict=True)]


def _unpermute(rows: int, heads: int) -> torch.Tensor:
    """The row order that undoes llama.cpp's rotary permutation of a query or key weight, whose
    rows it stores as (head, pair, half) instead of (head, half, pair)."""
    return torch.arange(rows).reshape(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
