"""Weights in blocks of 32 inputs, as a GGUF file holds them and the integer kernels read them
(:mod:`core.models.quant`'s layers, :mod:`core.models.gguf`'s decoders)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

BLOCK = 32  # weights a block holds, along the input dimension
SUPER_BLOCK = 256  # weights under one of a K-quant's float16 multipliers
TILE_ROWS = 8  # weight rows the integer kernels read together
PAIR_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)  # a byte's four 2-bit fields
BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)  # a byte's eight bits


def k_quant_scales(sub: torch.Tensor, sup: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q4_K or Q5_K file's scales as it holds them, (out, in / 32, 2) 6-bit scale and
    minimum codes and (out, in / 256, 2) float16 d and dmin, as each block's float32 scale
    d * sc and minimum -(dmin * m): products of a float16 and a 6-bit integer, exact."""
    sc, m = sub.float().unbind(-1)
    d, dmin = sup.float().repeat_interleave(SUPER_BLOCK // BLOCK, dim=1).unbind(-1)
    return d * sc, -(dmin * m)


Quantized = TypeVar("Quantized")


def _by_rows(quantize: Callable[[torch.Tensor], Quantized],
             cat: Callable[[Sequence[Quantized]], Quantized], weight: torch.Tensor,
             rows_at_once: int) -> Quantized:
    """``quantize`` of ``weight`` ``rows_at_once`` rows at a time (bounding its float32
    temporaries while a model loads), the parts put together by ``cat``."""
    parts = [quantize(weight[i:i + rows_at_once]) for i in range(0, weight.shape[0], rows_at_once)]
    return parts[0] if len(parts) == 1 else cat(parts)


@dataclass(frozen=True)
class Int4Blocks:
    """(out, in) weights as 4-bit codes in blocks of 32 inputs: weight = code * scale + min.

    The codes lie two a byte as ggml's 4-bit types hold them: byte j of a block carries code j
    in its low nibble and code 16 + j in its high one, so a Q4_0 or Q4_1 block's 16 bytes are
    taken as they are."""

    packed: torch.Tensor  # (out, in / 32, 16) uint8
    scales: torch.Tensor  # (out, in / 32) float32, or float16 (a Q4_0 or Q4_1 file's own)
    mins: torch.Tensor | None  # as the scales; None: each is -8 times its scale (Q4_0)
    # A Q4_K file's scales as it holds them, beside their float32 products: each block's 6-bit
    # scale and minimum codes, (out, in / 32, 2) uint8, and each super-block's (8 blocks')
    # float16 d and dmin, (out, in / 256, 2): scale = d * sc and min = -(dmin * m), exactly
    sub_scales: torch.Tensor | None = None
    super_scales: torch.Tensor | None = None

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
                   ) -> Int4Blocks:
        """From (out, in / 32, 32) codes 0..15, one a byte, in order."""
        half = BLOCK // 2
        return cls(codes[..., :half] | (codes[..., half:] << 4), scales, mins)

    @classmethod
    def from_q4_k(cls, packed: torch.Tensor, sub: torch.Tensor, sup: torch.Tensor
                  ) -> Int4Blocks:
        """From a Q4_K file's codes and scales as it holds them (see the fields): their
        float32 scales d * sc and minimums -(dmin * m) beside them, exact."""
        return cls(packed, *k_quant_scales(sub, sup), sub, sup)

    @classmethod
    def quantize(cls, weight: torch.Tensor, rows_at_once: int = 1024) -> Int4Blocks:
        """Each block's codes spanning its range: the scale a 15th of it, the minimum its own.
        ``rows_at_once`` bounds the float32 temporaries while a model loads."""
        return _by_rows(cls._quantize_rows, cls.cat, weight, rows_at_once)

    @classmethod
    def _quantize_rows(cls, weight: torch.Tensor) -> Int4Blocks:
        blocks = weight.detach().float().reshape(weight.shape[0], -1, BLOCK)
        low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        scale = (high - low) / 15
        inverse = torch.where(scale == 0, 0, 1 / scale)
        codes = ((blocks - low) * inverse).round().clamp(0, 15).to(torch.uint8)
        return cls.from_codes(codes, scale.squeeze(-1), low.squeeze(-1))

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.packed.shape[1] * BLOCK

    @property
    def codes(self) -> torch.Tensor:
        """(out, in / 32, 32) uint8: each block's codes, one a byte, in order."""
        return torch.cat([self.packed & 15, self.packed >> 4], dim=-1)

    def rows(self, index: torch.Tensor) -> Int4Blocks:
        return Int4Blocks(self.packed[index], self.scales[index],
                          None if self.mins is None else self.mins[index],
                          None if self.sub_scales is None else self.sub_scales[index],
                          None if self.super_scales is None else self.super_scales[index])

    def full_mins(self) -> torch.Tensor:
        """Each block's minimum, in the scales' type."""
        return -8 * self.scales if self.mins is None else self.mins

    @staticmethod
    def cat(parts: Sequence[Int4Blocks]) -> Int4Blocks:
        """The parts' rows one after another (a fused projection); parts of different types
        meet in float32, with their minimums."""
        dtypes = {p.scales.dtype for p in parts}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        scales = torch.cat([p.scales.to(dtype) for p in parts])
        if all(p.mins is None for p in parts):
            return Int4Blocks(torch.cat([p.packed for p in parts]), scales, None)
        k_scales: list[torch.Tensor | None] = [None, None]
        if all(p.sub_scales is not None and p.super_scales is not None for p in parts):
            k_scales = [torch.cat([p.sub_scales for p in parts]),  # type: ignore[misc]
                        torch.cat([p.super_scales for p in parts])]  # type: ignore[misc]
        return Int4Blocks(torch.cat([p.packed for p in parts]), scales,
                          torch.cat([p.full_mins().to(dtype) for p in parts]), *k_scales)

    def dequantize(self) -> torch.Tensor:
        """The (out, in) float32 weights."""
        scales = self.scales.float()
        mins = -8 * scales if self.mins is None else self.mins.float()
        weight = torch.addcmul(mins.unsqueeze(-1), self.codes.float(), scales.unsqueeze(-1))
        return weight.reshape(self.shape)


@dataclass(frozen=True)
class Int8Blocks:
    """(out, in) weights as 8-bit codes in blocks of 32 inputs: weight = code * scale + minimum,
    each block with one scale, or two (codes 0-15 and 16-31 each their own), and a minimum or
    none (zero).

    Every 5-, 6- and 8-bit type of llama.cpp fits, its values as the file holds them
    (:mod:`core.models.gguf`): Q8_0 and Q5_0 are codes with a float16 scale (Q5_0's q - 16),
    Q5_1 codes 0..31 with a float16 scale and minimum, Q5_K codes 0..31 with a float32 scale and
    minimum, Q6_K codes -32..31 with two float32 scales. A 4-bit block fits too
    (:meth:`from_int4`)."""

    codes: torch.Tensor  # (out, in / 32, 32) int8
    scales: torch.Tensor  # (out, in / 32), or (out, in / 16) two a block: float16 or float32
    mins: torch.Tensor | None = None  # (out, in / 32) in the scales' type; None: all zero
    # a Q6_K file's scales as it holds them, of which ``scales`` are the products: each 16
    # codes' signed 8-bit sc, (out, in / 16) int8, and each 256's float16 d, (out, in / 256)
    sub_scales: torch.Tensor | None = None
    super_scales: torch.Tensor | None = None

    @classmethod
    def from_q6_k(cls, codes: torch.Tensor, sub: torch.Tensor, sup: torch.Tensor
                  ) -> Int8Blocks:
        """From a Q6_K file's codes q - 32 and scales as it holds them (see the fields): two
        float32 scales d * sc a block beside them, exact."""
        scales = sup.float().repeat_interleave(SUPER_BLOCK // 16, dim=1) * sub.float()
        return cls(codes, scales, None, sub, sup)

    @classmethod
    def quantize_5_bits(cls, weight: torch.Tensor, rows_at_once: int = 1024) -> Int8Blocks:
        """5-bit codes (0..31) spanning each block's range, with a float16 scale and minimum
        (llama.cpp's Q5_1), the codes rounded against the float16 values. ``rows_at_once``
        bounds the float32 temporaries while a model loads."""
        return _by_rows(cls._quantize_5_bits, cls.cat, weight, rows_at_once)

    @classmethod
    def _quantize_5_bits(cls, weight: torch.Tensor) -> Int8Blocks:
        blocks = weight.detach().float().reshape(weight.shape[0], -1, BLOCK)
        low = blocks.amin(-1, keepdim=True).half()
        scale = ((blocks.amax(-1, keepdim=True) - low.float()) / 31).half()
        inverse = torch.where(scale == 0, 0, 1 / scale.float())
        codes = ((blocks - low.float()) * inverse).round().clamp(0, 31).to(torch.int8)
        return cls(codes, scale.squeeze(-1), low.squeeze(-1))

    @classmethod
    def from_int4(cls, blocks: Int4Blocks) -> Int8Blocks:
        """The same weights a byte a code: Q4_0's q - 8 with its scale (no minimums), the other
        4-bit forms' codes with their scales and minimums. Lossless: the same floats."""
        if blocks.mins is None:
            return cls(blocks.codes.view(torch.int8) - 8, blocks.scales)
        return cls(blocks.codes.view(torch.int8), blocks.scales, blocks.mins)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * BLOCK

    @property
    def scales_per_block(self) -> int:
        """1, or 2: one scale for codes 0-15 and one for codes 16-31."""
        return self.scales.shape[1] // self.codes.shape[1]

    @property
    def six_bits(self) -> bool:
        """Whether these are a Q6_K file's blocks, with its scales (the 6-bit kernel's input)."""
        return self.sub_scales is not None and self.super_scales is not None

    def rows(self, index: torch.Tensor) -> Int8Blocks:
        return Int8Blocks(self.codes[index], self.scales[index],
                          None if self.mins is None else self.mins[index],
                          None if self.sub_scales is None else self.sub_scales[index],
                          None if self.super_scales is None else self.super_scales[index])

    def full_mins(self) -> torch.Tensor:
        """Each block's minimum, in the scales' type (zeros where there are none)."""
        if self.mins is not None:
            return self.mins
        return torch.zeros(self.codes.shape[:2], dtype=self.scales.dtype)

    @staticmethod
    def cat(parts: Sequence[Int8Blocks]) -> Int8Blocks:
        """The parts' rows one after another (a fused projection). Parts of different forms meet
        in the widest, exactly: float32 when their types differ, two scales a block (one
        repeated) when one part has two, minimums (zero for the others) when one has them.
        A Q6_K file's own scales stay only when every part has them."""
        dtypes = {p.scales.dtype for p in parts}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        per = max(p.scales_per_block for p in parts)
        scales = torch.cat([p.scales.to(dtype).repeat_interleave(per // p.scales_per_block, 1)
                            for p in parts])
        mins = None if all(p.mins is None for p in parts) \
            else torch.cat([p.full_mins().to(dtype) for p in parts])
        if all(p.six_bits for p in parts):
            return Int8Blocks(torch.cat([p.codes for p in parts]), scales, mins,
                              torch.cat([p.sub_scales for p in parts]),  # type: ignore[misc]
                              torch.cat([p.super_scales for p in parts]))  # type: ignore[misc]
        return Int8Blocks(torch.cat([p.codes for p in parts]), scales, mins)

    def dequantize(self) -> torch.Tensor:
        """The (out, in) float32 weights: code * scale (+ minimum), each product rounded once,
        as gguf-py's dequantize computes them."""
        out, blocks = self.codes.shape[:2]
        per = self.scales_per_block
        codes = self.codes.float().view(out, blocks, per, BLOCK // per)
        scales = self.scales.float().view(out, blocks, per, 1)
        if self.mins is None:
            return (codes * scales).reshape(self.shape)
        mins = self.mins.float().view(out, blocks, 1, 1)
        return torch.addcmul(mins, codes, scales).reshape(self.shape)


TileKernel = Literal["q4", "q4k", "q8", "q6", "q5", "q5k"]


@dataclass(frozen=True)
class Tiles:
    """Blocks already in an integer kernel's layout (:mod:`core.models.quant`'s ``tile``: rows
    in tiles of 8), as ``gguf_tiles`` (``gguf_decode.cpp``) writes a file's bytes, under the
    names the layers give them (empty: unused). ``kernel``:

    - ``q4``: ``codes`` (tiles, in / 32, 128) uint8, float16 ``scales`` and ``mins`` (tiles,
      in / 32, 8) (Q4_0: no minimums);
    - ``q4k``: ``codes`` as ``q4``, ``sub_scales`` (tiles, in / 32, 2, 8) uint8,
      ``super_scales`` (tiles, in / 256, 2, 8) float16;
    - ``q8``: ``codes`` (tiles, in / 32, 256) int8, float16 ``scales`` (tiles, in / 32, 8);
    - ``q6``: ``codes`` (tiles, in / 32, 192) uint8, int8 ``scales`` (tiles, in / 16, 8),
      float16 ``super_scales`` (tiles, in / 256, 8);
    - ``q5``: ``codes`` (tiles, in / 32, 160) uint8 (``q4``'s, then the codes' fifth bits),
      float16 ``scales`` and ``mins`` as ``q4``'s (Q5_0: no minimums);
    - ``q5k``: ``codes`` as ``q5``, ``sub_scales`` and ``super_scales`` as ``q4k``'s."""

    kernel: TileKernel
    shape: tuple[int, int]  # (out, in)
    codes: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor
    sub_scales: torch.Tensor
    super_scales: torch.Tensor


@dataclass(frozen=True)
class FileBlocks:
    """A fused projection's tensors of one type still as a file holds them, decoded only when
    needed: a layer on a kernel takes :meth:`tiles`, written from the file's bytes in one pass
    (no decoded copy, no concatenation of the parts, no tiling after); anything else takes
    :meth:`decoded`, the same weights as blocks of ``form``."""

    form: type[Int4Blocks] | type[Int8Blocks]
    shape: tuple[int, int]
    decoded: Callable[[], Int4Blocks | Int8Blocks]
    tiles: Callable[[], Tiles]
    kernel: TileKernel  # the kernel whose layout tiles() writes


def concrete(weight: Int4Blocks | Int8Blocks | FileBlocks) -> Int4Blocks | Int8Blocks:
    """``weight``'s blocks, decoded if they were not."""
    return weight.decoded() if isinstance(weight, FileBlocks) else weight


def form(weight: Int4Blocks | Int8Blocks | FileBlocks) -> type[Int4Blocks] | type[Int8Blocks]:
    """The blocks ``weight`` is or decodes to."""
    return weight.form if isinstance(weight, FileBlocks) else type(weight)


@dataclass(frozen=True)
class MixedBlocks:
    """A fused projection whose parts a file holds in 4-bit and in 8-bit blocks (a Q4_K_M's
    Q4_K query and key beside its Q6_K value): each run of alike parts in its own form, rows one
    after another, so that each can run on its own kernel."""

    parts: tuple[Int4Blocks | Int8Blocks | FileBlocks, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]

    def merged(self) -> Int8Blocks:
        """All of it in one 8-bit form (:meth:`Int8Blocks.cat`): the same floats."""
        parts = [concrete(p) for p in self.parts]
        return Int8Blocks.cat([p if isinstance(p, Int8Blocks) else Int8Blocks.from_int4(p)
                               for p in parts])

    def dequantize(self) -> torch.Tensor:
        return torch.cat([concrete(p).dequantize() for p in self.parts])


# a linear layer's weights as a file holds them: 4-bit or 8-bit blocks (or both, or not yet
# decoded), or float
Weight = Int4Blocks | Int8Blocks | FileBlocks | MixedBlocks | torch.Tensor
