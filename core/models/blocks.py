"""Weights in blocks of 32 inputs, as a GGUF file holds them and the integer kernels read them
(:mod:`core.models.quant`'s layers, :mod:`core.models.gguf`'s decoders)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLOCK = 32  # weights a block holds, along the input dimension


@dataclass(frozen=True)
class Int4Blocks:
    """(out, in) weights as 4-bit codes in blocks of 32 inputs: weight = code * scale + min.

    The codes lie two a byte as ggml's 4-bit types hold them: byte j of a block carries code j
    in its low nibble and code 16 + j in its high one, so a Q4_0 or Q4_1 block's 16 bytes are
    taken as they are."""

    packed: torch.Tensor  # (out, in / 32, 16) uint8
    scales: torch.Tensor  # (out, in / 32) float32, or float16 (a Q4_0 or Q4_1 file's own)
    mins: torch.Tensor | None  # as the scales; None: each is -8 times its scale (Q4_0)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
                   ) -> Int4Blocks:
        """From (out, in / 32, 32) codes 0..15, one a byte, in order."""
        half = BLOCK // 2
        return cls(codes[..., :half] | (codes[..., half:] << 4), scales, mins)

    @classmethod
    def quantize(cls, weight: torch.Tensor, rows_at_once: int = 1024) -> Int4Blocks:
        """Each block's codes spanning its range: the scale a 15th of it, the minimum its own.
        ``rows_at_once`` bounds the float32 temporaries while a model loads."""
        parts = [cls._quantize_rows(weight[i:i + rows_at_once])
                 for i in range(0, weight.shape[0], rows_at_once)]
        return parts[0] if len(parts) == 1 else cls.cat(parts)

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
                          None if self.mins is None else self.mins[index])

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
        return Int4Blocks(torch.cat([p.packed for p in parts]), scales,
                          torch.cat([p.full_mins().to(dtype) for p in parts]))

    def dequantize(self) -> torch.Tensor:
        """The (out, in) float32 weights."""
        scales = self.scales.float()
        mins = -8 * scales if self.mins is None else self.mins.float()
        weight = torch.addcmul(mins.unsqueeze(-1), self.codes.float(), scales.unsqueeze(-1))
        return weight.reshape(self.shape)


@dataclass(frozen=True)
class Int8Blocks:
    """(out, in) weights as signed 8-bit codes in blocks of 32 inputs, each block with a
    float16 scale: weight = code * scale (llama.cpp's Q8_0, as the file holds it)."""

    codes: torch.Tensor  # (out, in / 32, 32) int8
    scales: torch.Tensor  # (out, in / 32) float16

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * BLOCK

    def rows(self, index: torch.Tensor) -> Int8Blocks:
        return Int8Blocks(self.codes[index], self.scales[index])

    @staticmethod
    def cat(parts: Sequence[Int8Blocks]) -> Int8Blocks:
        return Int8Blocks(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]))

    def dequantize(self) -> torch.Tensor:
        """The (out, in) float32 weights."""
        weight = self.codes.float() * self.scales.float().unsqueeze(-1)
        return weight.reshape(self.shape)


# a linear layer's weights as a file holds them: 4-bit or 8-bit blocks, or float
Weight = Int4Blocks | Int8Blocks | torch.Tensor
