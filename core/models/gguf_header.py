"""The header of a GGUF file: its metadata's scalars and strings, and where each tensor lies.

gguf-py's reader parses every metadata array into numpy views, the tokenizer's 100,000 strings
among them: 5.4 s for the bundled 135M model, twice what loading its weights takes. This reads
the same header (GGUF versions 2 and 3, little-endian) and skips the long arrays, in milliseconds;
the tokenizer is built from the full metadata once (:mod:`core.models.gguf_tokenizer`) and cached
(:func:`core.models.loader.gguf_metadata`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ModelLoadError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# metadata value types: struct formats of the fixed-size ones; 8 is a string, 9 an array
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
LENGTH = struct.Struct("<Q")  # a string's byte count, before its bytes
# the block types the kernels run as a file holds them (core.models.gguf.TILE_KERNELS): the
# bytes their tiles take for a byte of the file (a K-quant's scales and minimums widen from 12
# bytes to 16 a super-block)
TILED_TYPES = {"Q4_0": 1.0, "Q4_1": 1.0, "Q5_0": 1.0, "Q5_1": 1.0, "Q8_0": 1.0, "Q6_K": 1.0,
               "Q4_K": 148 / 144, "Q5_K": 180 / 176}
SMALL_ARRAY = 1024  # arrays of at most so many scalars are read (a value a layer), longer skipped


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml's order: the input (contiguous) dimension first
    type_name: str  # ggml's name of its type: F32, Q4_K, ...
    offset: int  # bytes from the start of the file
    nbytes: int

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))


@dataclass(frozen=True)
class Header:
    metadata: dict[str, Any]  # scalars, strings, tuples of up to SMALL_ARRAY scalars
    tensors: dict[str, TensorInfo]


def read_header(path: Path, data: memoryview, whole: frozenset[str] = frozenset()) -> Header:
    """The header of the GGUF ``path`` whose bytes are ``data``; ModelLoadError naming the
    file and the reason if it is not a GGUF file, is cut short, or names an unknown type. The
    arrays of the keys in ``whole`` are read whole, as lists (a tokenizer's vocabulary)."""
    try:
        return _Reader(data, whole).header(path)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: truncated or corrupt GGUF header ({exc})") from None


def map_header(path: Path, whole: frozenset[str] = frozenset()) -> Header:
    """:func:`read_header` of the file ``path``, through a memory map that closes once it is
    read."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot map the file ({exc})") from exc
    return read_header(path, data.data, whole)


class _Reader:
    def __init__(self, data: memoryview, whole: frozenset[str] = frozenset()) -> None:
        self.data = data
        self.pos = 0
        self.whole = whole

    def header(self, path: Path) -> Header:
        if bytes(self.data[:4]) != MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (it starts with "
                                 f"{bytes(self.data[:4])!r}, not {MAGIC!r})")
        self.pos = 4
        version, num_tensors, num_fields = self.scalar("<I"), self.scalar("<Q"), \
            self.scalar("<Q")
        if version not in (2, 3):
            raise ModelLoadError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        metadata: dict[str, Any] = {}
        for _ in range(num_fields):
            key = self.string()
            kind = self.scalar("<I")
            metadata[key] = self.array() if key in self.whole and kind == ARRAY \
                else self.value(kind)
        infos = [self.tensor_info(path) for _ in range(num_tensors)]
        alignment = int(metadata.get("general.alignment") or DEFAULT_ALIGNMENT)
        start = -(-self.pos // alignment) * alignment
        tensors = {}
        for name, shape, type_name, offset, nbytes in infos:
            tensors[name] = TensorInfo(name, shape, type_name, start + offset, nbytes)
            if start + offset + nbytes > len(self.data):
                raise ModelLoadError(f"{path}: truncated: tensor {name} ends past the end of "
                                     f"the file ({len(self.data)} bytes)")
        return Header(metadata, tensors)

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.scalar("<Q")
        text = bytes(self.data[self.pos:self.pos + size]).decode("utf-8")
        if len(text.encode()) != size:
            raise IndexError("a string runs past the end of the file")
        self.pos += size
        return text

    def array(self) -> list[Any]:
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in SCALARS:
            fmt = SCALARS[item]
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.data, self.pos))
            self.pos += count * struct.calcsize(fmt)
            return values
        if item == STRING:  # a vocabulary's: a header of 262,144 tokens read in 0.11 s, not 0.2
            data, pos, length, strings = self.data, self.pos, LENGTH.unpack_from, []
            for _ in range(count):
                start = pos + LENGTH.size
                pos = start + length(data, pos)[0]
                strings.append(str(data[start:pos], "utf-8"))
            if pos > len(data):
                raise IndexError("a string runs past the end of the file")
            self.pos = pos
            return strings
        return [self.value(item) for _ in range(count)]

    def value(self, kind: int) -> Any:
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind != ARRAY:
            raise struct.error(f"unknown metadata value type {kind}")
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in SCALARS and count <= SMALL_ARRAY:  # a value a layer, say
            return tuple(self.scalar(SCALARS[item]) for _ in range(count))
        if item in SCALARS:  # skipped whole
            self.pos += count * struct.calcsize(SCALARS[item])
        elif item == STRING:  # skipped by their lengths, undecoded (a vocabulary's: 100,000)
            pos, length = self.pos, LENGTH.unpack_from
            for _ in range(count):
                pos += LENGTH.size + length(self.data, pos)[0]
            if pos > len(self.data):
                raise IndexError("a string runs past the end of the file")
            self.pos = pos
        else:
            for _ in range(count):
                self.value(item)
        return None

    def tensor_info(self, path: Path) -> tuple[str, tuple[int, ...], str, int, int]:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        name = self.string()
        shape = tuple(self.scalar("<Q") for _ in range(self.scalar("<I")))
        type_id, offset = self.scalar("<I"), self.scalar("<Q")
        try:
            kind = GGMLQuantizationType(type_id)
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {name} has the unknown quantization type "
                                 f"{type_id}") from None
        block, block_bytes = GGML_QUANT_SIZES[kind]
        elements = int(np.prod(shape, dtype=np.int64))
        if shape and shape[0] % block:
            raise ModelLoadError(f"{path}: tensor {name}'s rows ({shape[0]}) are not whole "
                                 f"{kind.name} blocks of {block}")
        return name, shape, kind.name, offset, elements // block * block_bytes
