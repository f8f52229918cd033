"""In-situ quantization (ISQ) of a loaded model's linear layers, with torch's own CPU kernels.

A quantization type is named as in mistral.rs and llama.cpp or by its bit width; each maps to
one weight format here:

- ``int8`` (``8``, ``q8_0``, ``q8_1``, ``q8k``, ``int8``): per-output-channel symmetric int8
  weights times dynamically quantized int8 activations (fbgemm's ``quantized::linear_dynamic``).
  torch's weight-only ``aten._weight_int8pack_mm`` was measured 3-40x slower than fp32 on an AVX2
  CPU, fbgemm's kernel 2.7-3.7x faster.
  A GGUF's 8-bit blocks (Q8_0, and Q5_0, Q5_1, Q5_K and Q6_K, losslessly a byte a code: see
  :class:`Int8Blocks`) under ``int8`` stay as the file holds them and run on our ``q8_matmul``
  kernel where it is built (Q6_K's on ``q6_matmul``, 6 bits a code); in the file's own format
  they do under any (:func:`keeps_blocks`).
- ``int5`` (``5``, ``q5_0``, ``q5_1``, ``q5k``, ``int5``): 5-bit weights in blocks of 32 along
  the input dimension, each with a float16 scale and minimum (llama.cpp's Q5_1), on our
  ``q5_matmul`` kernel: 0.75 bytes a weight. A GGUF's Q5_0, Q5_1 and Q5_K tensors run so as the
  file holds them (``q5k_matmul`` for Q5_K's scales), as they also do under ``int8``. Where our
  kernels are not built, ``int5`` is ``int8``.
- ``int4`` (``4``, ``q4_0``, ``q4_1``, ``q4k``, ``int4``): 4-bit weights in blocks of 32 along
  the input dimension, each with a scale and a minimum (llama.cpp's q4_1 layout). On AVX2 CPUs
  our own kernel (:mod:`core.models.kernels`) computes them against activations quantized to int8
  per block of 32; at one row it reads 0.75 bytes a weight and ran the default model's linears
  1.45x faster than int8. Elsewhere ``aten._weight_int4pack_mm_for_cpu`` computes them.
- ``f16`` (``fp16``, ``float16``, ``half``): float16 weights, converted to float32 inside fbgemm's
  packed matmul (``quantized::linear_dynamic_fp16``); activations and accumulation stay float32,
  so results are within float16 rounding of the weights. Half the memory traffic of float32: on
  a 2-core AVX2 CPU its linears ran 2.1x (batch 1) and 2.4x (batch 16) faster than oneDNN's
  float32 ones, the whole decode step 1.8x and 1.2x (``bench/quantization.md``).
- ``bf16``: bfloat16 weights (emulated on CPUs without native bf16: smaller, not faster batched).
- ``none`` (``f32``, ``fp32``, ``float32``): full-precision weights.
- ``auto`` (the default): ``f16`` on an x86 CPU (fbgemm), else ``none``. On the default model
  its perplexity equals float32's to four digits, at 59% of the weight memory.

Every linear layer is quantized, the LM head included (at f16 when the rest is int4: see
:data:`OUTPUT_LAYER_KIND`); the token embedding stays as the checkpoint holds it (a lookup
reads one row a token): full precision, or a GGUF's 4-bit or 8-bit blocks
(:class:`Int4Embedding`, :class:`Int8Embedding`).
Re-quantizing always starts from the checkpoint's weights, so errors do not compound.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams

# the layers' inputs, which the model families import from here too
from core.models import pages
from core.models.blocks import (
    BIT_SHIFTS,
    BLOCK,
    PAIR_SHIFTS,
    TILE_ROWS,
    FileBlocks,
    Int4Blocks,
    Int8Blocks,
    MixedBlocks,
    Tiles,
    Weight,
    concrete,
    form,
    k_quant_scales,
)

INT4_GROUP_SIZE = BLOCK


def for_device(kind: str, device: torch.device) -> str:
    """The concrete type ``kind`` means on ``device``: ``auto`` picks float16 weights where
    fbgemm runs them (x86 CPUs), full precision elsewhere; weight formats apply on the CPU only."""
    if kind == "auto":
        cpu_f16 = device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines
        return "f16" if cpu_f16 else "none"
    return kind


class Int8Linear(nn.Module):
    """int8 weights (one scale per output channel) times int8 activations, accumulated in int32:
    fbgemm's dynamic quantized linear, the fastest kernel torch has for this on x86 (AVX2 and
    up). fbgemm quantizes the activations with one scale and zero point per call; each row is
    first divided by its own largest magnitude (and the output multiplied back), so a token of
    small magnitude is not crushed by a large one beside it. The grid still spans the batch's
    range, so a row's result can differ slightly with its neighbours (within quantization
    error). A single row skips the scaling: the call's scale is already its own."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        out_features, in_features = w.shape
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).double()  # (out,)
        with warnings.catch_warnings():  # torch marks its quantized tensor API as deprecated
            warnings.simplefilter("ignore")
            zero = torch.zeros_like(scale, dtype=torch.long)
            qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self.linear = LinearPackedParams(dtype=torch.qint8)  # packs a 1 x 1 placeholder
            self.linear.set_weight_bias(qweight, None)
        self.bias = None if bias is None else bias.detach()
        self.nbytes = out_features * in_features + 8 * out_features  # int8 + scale + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, so AVX2's pairwise int16 sums cannot saturate
        packed = self.linear._packed_params
        if x.shape[0] == 1:  # one row: fbgemm's per-call scale is already that row's own
            out: torch.Tensor = torch.ops.quantized.linear_dynamic(x.float(), packed,
                                                                   reduce_range=True)
        else:
            row_scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
            y = torch.ops.quantized.linear_dynamic(x.float() / row_scale, packed,
                                                   reduce_range=True)
            out = y * row_scale
        out = out.to(x.dtype)
        return out if self.bias is None else out + self.bias


class F16Linear(nn.Module):
    """float16 weights packed for fbgemm's half-precision matmul, computed in float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        # packed once: quantized.dynamic.Linear would first pack a zero weight of this size
        self.linear = LinearPackedParams(dtype=torch.float16)
        self.linear.set_weight_bias(weight.detach().float(),
                                    None if bias is None else bias.detach().float())
        self.nbytes = 2 * out_features * in_features + (0 if bias is None else 4 * out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.linear._packed_params
        out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x.float(), packed)
        return out.to(x.dtype)


def tile(per_row: torch.Tensor, kept: bool = True) -> torch.Tensor:
    """The integer kernels' layout (q4_matmul.cpp, q8_matmul.cpp): rows in tiles of 8 (zero rows
    pad the last), block after block. (out, blocks, n) bytes -> (tiles, blocks, 8 * n): in a
    block, byte 4 * r + q of run i is row r's byte 4 * i + q. (out, blocks) scales -> (tiles,
    blocks, 8): the tile's 8 rows side by side. ``kept``: a layer's own, in huge pages
    (:mod:`core.models.pages`); else a step on the way to another layout, in torch's memory."""
    place = pages.contiguous if kept else torch.Tensor.contiguous
    pad = -per_row.shape[0] % TILE_ROWS
    if pad:
        per_row = nn.functional.pad(per_row, (0, 0) * (per_row.dim() - 1) + (0, pad))
    if per_row.dim() == 2:
        return place(per_row.view(-1, TILE_ROWS, per_row.shape[1]).transpose(1, 2))
    _, blocks, n = per_row.shape
    # moved as 4-byte words, not bytes: a 1B model's weights tile in a tenth of the time
    words = per_row.contiguous().view(torch.int32).view(-1, TILE_ROWS, blocks, n // 4)
    tiles = place(words.permute(0, 2, 3, 1)).view(per_row.dtype)
    return tiles.view(tiles.shape[0], blocks, -1)


def tile_rows(tiled: torch.Tensor, index: torch.Tensor, per_block: bool = False
              ) -> torch.Tensor:
    """Rows ``index`` of a :func:`tile` layout, as they were before it: (len, blocks, n) bytes,
    or (len, blocks) when ``per_block`` (scales)."""
    tile_of, row = index // TILE_ROWS, index % TILE_ROWS
    if per_block:
        return tiled[tile_of, :, row]
    tiles, blocks, n = tiled.shape
    runs = tiled.view(tiles, blocks, n // (4 * TILE_ROWS), TILE_ROWS, 4)
    return runs[tile_of, :, :, row, :].reshape(-1, blocks, n // TILE_ROWS)  # traced: no len()


def tile_pairs(per_row: torch.Tensor) -> torch.Tensor:
    """(out, groups, 2) -> (tiles, groups, 2, 8): a tile's 8 rows side by side, its first
    values (a Q4_K block's scale codes, a super-block's d) before its second ones."""
    pad = -per_row.shape[0] % TILE_ROWS
    if pad:
        per_row = nn.functional.pad(per_row, (0, 0, 0, 0, 0, pad))
    return pages.contiguous(per_row.view(-1, TILE_ROWS, *per_row.shape[1:]).permute(0, 2, 3, 1))


def tile_pairs_rows(tiled: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of a :func:`tile_pairs` layout: (len, groups, 2)."""
    return tiled[index // TILE_ROWS, :, :, index % TILE_ROWS]


def six_bit_rows(packed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``q6_pack``'s layout (q6_matmul.cpp), as :class:`Int8Blocks` codes
    q - 32: (len, blocks, 32) int8."""
    tiles, blocks, _ = packed.shape
    tile_of, row = index // TILE_ROWS, index % TILE_ROWS
    # each 32-byte group's byte 4 * r + q: row r's code 4 * run + q
    groups = packed.view(tiles, blocks, 6, TILE_ROWS, 4)[tile_of, :, :, row, :]
    low, high = groups[:, :, :4], groups[:, :, 4:]  # (len, blocks, 4 or 2, 4)
    low = torch.stack([low & 15, low >> 4], dim=3)  # runs 2p, 2p + 1
    high = (high.unsqueeze(3) >> PAIR_SHIFTS.view(4, 1)) & 3  # runs 4h + s
    codes = low.reshape(-1, blocks, BLOCK) | (high.reshape(-1, blocks, BLOCK) << 4)
    return codes.to(torch.int8) - 32  # a cast: traced graphs cannot record view(dtype)


def five_bit_tiles(tiled: torch.Tensor) -> torch.Tensor:
    """:func:`tile`'s layout of codes 0..31, (tiles, blocks, 256) int8, in 5 bits a code as
    q5_matmul reads them: (tiles, blocks, 160) uint8, runs i and 4 + i in the low and high
    nibbles of 32 bytes each, then byte c's bit s: run s's byte c's fifth bit."""
    tiles, blocks, _ = tiled.shape
    runs = tiled.view(tiles, blocks, 8, 32).view(torch.uint8)
    nibbles = (runs[:, :, :4] & 15) | ((runs[:, :, 4:] & 15) << 4)
    fifth = (((runs >> 4) & 1) << BIT_SHIFTS.view(8, 1)).sum(dim=2, dtype=torch.uint8)
    return torch.cat([nibbles.reshape(tiles, blocks, 128), fifth], dim=-1)


def five_bit_rows(packed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of the 5-bit tiles (q5_matmul's: (tiles, blocks, 160) uint8), as codes
    0..31: (len, blocks, 32) int8."""
    tiles, blocks, _ = packed.shape
    # each 32-byte group's byte 4 * r + q: row r's codes 4 * run + q (low nibble) and
    # 16 + 4 * run + q (high), then, in the last group, bit s: code 4 * s + q's fifth bit
    groups = packed.view(tiles, blocks, 5, TILE_ROWS, 4)[index // TILE_ROWS, :, :,
                                                          index % TILE_ROWS, :]
    low = groups[:, :, :4]  # (len, blocks, run, q)
    nibbles = torch.stack([low & 15, low >> 4], dim=2)  # codes 16 * h + 4 * run + q
    fifth = (groups[:, :, 4].unsqueeze(2) >> BIT_SHIFTS.view(8, 1)) & 1  # codes 4 * s + q
    codes = nibbles.reshape(-1, blocks, BLOCK) | (fifth.reshape(-1, blocks, BLOCK) << 4)
    return codes.to(torch.int8)  # a cast: traced graphs cannot record view(dtype)


class Int4Linear(nn.Module):
    """y = x @ dequant(w_int4).T + b, with 4-bit weights in blocks of 32 inputs.

    Each block has a scale and a minimum: weight = code * scale + minimum, codes 0..15 spanning
    the block's range (llama.cpp's q4_1). :mod:`core.models.kernels`' AVX2 kernel runs decode steps
    and prompt chunks alike: at 512 rows of the gate/up projection it took 11.9 ms, a float32 matmul
    by the weight already dequantized 18.6 ms. Without the kernel (``own_kernel`` false: whoever
    builds the layer decides, from :func:`core.models.kernels.available`), torch's
    ``aten._weight_int4pack_mm_for_cpu`` computes the same blocks in its own layout.
    """

    def __init__(self, weight: torch.Tensor | Int4Blocks | Tiles, bias: torch.Tensor | None,
                 own_kernel: bool = False, dtype: torch.dtype | None = None) -> None:
        """``weight``: float (out, in) weights, quantized here, :class:`Int4Blocks` taken
        as they are (a GGUF's 4-bit tensor), or :class:`Tiles` already in the kernel's layout
        (``own_kernel`` then). ``dtype``: the activations' (default: the float weight's, else
        float32), which torch's kernel wants its scales in."""
        super().__init__()
        self.bias = None if bias is None else bias.detach()
        blocks = weight if isinstance(weight, Int4Blocks | Tiles) \
            else Int4Blocks.quantize(weight)
        self.out_features, self.in_features = blocks.shape
        # with the kernel, tiled for it: (tiles of 8 rows, in / 32 blocks, 128) uint8 codes,
        # two a byte, and (tiles, blocks, 8) scales and minimums in the blocks' type (no
        # minimums: empty)
        self.codes: torch.Tensor | None = None
        self.scales = torch.empty(0)
        self.mins = torch.empty(0)
        # or, for a Q4_K file's blocks, their scales as it holds them (q4k_matmul): (tiles,
        # blocks, 2, 8) uint8 6-bit scale and minimum codes and (tiles, in / 256, 2, 8)
        # float16 d and dmin; the float scales and minimums then stay empty
        self.sub_scales = torch.empty(0, dtype=torch.uint8)
        self.super_scales = torch.empty(0, dtype=torch.float16)
        self.weight = torch.empty(0)  # torch's packed layout, without the kernel
        self.scales_and_zeros = torch.empty(0)
        if isinstance(blocks, Tiles):
            assert own_kernel and blocks.kernel in ("q4", "q4k"), blocks.kernel
            self.codes, self.scales, self.mins = blocks.codes, blocks.scales, blocks.mins
            if blocks.kernel == "q4k":
                self.sub_scales, self.super_scales = blocks.sub_scales, blocks.super_scales
        elif own_kernel:
            self._tile(blocks)
        else:
            self._pack(blocks, dtype or (weight.dtype if isinstance(weight, torch.Tensor)
                                         else torch.float32))

    def _tile(self, blocks: Int4Blocks) -> None:
        # byte 4 * i + q of a row's block, as ggml holds it, carries its codes 4 * i + q (low
        # nibble) and 16 + 4 * i + q (high nibble): the kernel's tiles only move bytes
        self.codes = tile(blocks.packed)
        if blocks.sub_scales is not None and blocks.super_scales is not None:
            # a Q4_K file's 0.0625 bytes of scales a weight, not 0.25 as float32 products:
            # a quarter fewer bytes read a token
            self.sub_scales = tile_pairs(blocks.sub_scales)
            self.super_scales = tile_pairs(blocks.super_scales)
            return
        self.scales = tile(blocks.scales)
        self.mins = torch.empty(0, dtype=blocks.scales.dtype) if blocks.mins is None \
            else tile(blocks.mins)

    def blocks(self, index: torch.Tensor | None = None) -> Int4Blocks:
        """The tiled blocks of rows ``index`` (default: every row), as they were before."""
        assert self.codes is not None
        rows = torch.arange(self.out_features) if index is None else index
        packed = tile_rows(self.codes, rows)
        if self.sub_scales.numel():
            return Int4Blocks.from_q4_k(packed, tile_pairs_rows(self.sub_scales, rows),
                                        tile_pairs_rows(self.super_scales, rows))
        return Int4Blocks(packed, tile_rows(self.scales, rows, True),
                          tile_rows(self.mins, rows, True) if self.mins.numel() else None)

    def _pack(self, blocks: Int4Blocks, dtype: torch.dtype) -> None:
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            blocks.codes.reshape(self.out_features, self.in_features).to(torch.int32), 1)
        # torch's kernel computes (q - 8) * scale + zero: the zero point is min + 8 * scale
        scales = blocks.scales.float()
        zero = blocks.full_mins().float() + 8 * scales
        self.scales_and_zeros = torch.stack([scales, zero], dim=-1).transpose(
            0, 1).contiguous().to(dtype)  # (groups, out, 2)

    def dequantized(self) -> torch.Tensor:
        """The float32 (out, in) weight the kernel's codes stand for."""
        return self.blocks().dequantize()

    def block_scales(self) -> torch.Tensor:
        """(out, in / 32) float32: each block's step between codes."""
        return self.blocks().scales.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.codes is None:
            out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x, self.weight, INT4_GROUP_SIZE, self.scales_and_zeros)
        elif self.sub_scales.numel():
            out = torch.ops.infermcp.q4k_matmul(x.float(), self.codes, self.sub_scales,
                                               self.super_scales, self.out_features).to(x.dtype)
        else:
            out = torch.ops.infermcp.q4_matmul(x.float(), self.codes, self.scales, self.mins,
                                              self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias


def experts_alike(layers: Sequence[nn.Module]) -> bool:
    """Whether :func:`experts_forward` takes ``layers``: all on the 4-bit kernel, of one output
    size, without biases, with scales of one form (a Q4_K file's, or float ones of one type,
    with minimums or without)."""
    if not all(isinstance(layer, Int4Linear) and layer.codes is not None and layer.bias is None
               for layer in layers):
        return False
    forms = {(layer.out_features, bool(layer.sub_scales.numel()), layer.scales.dtype,
              bool(layer.mins.numel())) for layer in layers if isinstance(layer, Int4Linear)}
    return len(forms) == 1


def experts_forward(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Row e of ``x`` through ``layers[e]``, all in one kernel call (``q4_matmul_experts``): a
    mixture's chosen experts' projections of one token, where a call each spent more time
    waking the threads than computing. ``layers``: :func:`experts_alike`."""
    four = [layer for layer in layers if isinstance(layer, Int4Linear)]
    assert len(four) == len(layers)
    n, ops = four[0].out_features, torch.ops.infermcp
    if four[0].sub_scales.numel():
        out: torch.Tensor = ops.q4k_matmul_experts(
            x.float(), [layer.codes for layer in four], [layer.sub_scales for layer in four],
            [layer.super_scales for layer in four], n)
    else:
        out = ops.q4_matmul_experts(x.float(), [layer.codes for layer in four],
                                    [layer.scales for layer in four],
                                    [layer.mins for layer in four], n)
    return out.to(x.dtype)


class Int4Embedding(nn.Module):
    """A token embedding kept in 4-bit blocks (a GGUF's own): a lookup dequantizes the rows it
    reads, to exactly the floats of the whole table dequantized (a 1B model's 49152 x 2048 Q4_0
    table: 57 MB instead of 403 MB in float32). Tied to a 4-bit LM head that runs on the kernel,
    it reads the head's tiled blocks: one copy of the table, not two."""

    def __init__(self, blocks: Int4Blocks | Int4Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.head = blocks if isinstance(blocks, Int4Linear) else None
        if isinstance(blocks, Int4Linear):
            assert blocks.codes is not None, "a tied head's blocks are read in the kernel's layout"
            self.packed, self.scales, self.mins = blocks.codes, blocks.scales, blocks.mins
        else:  # a file's blocks may still be views of its map: kept, they are copied
            self.packed, self.scales = blocks.packed.contiguous(), blocks.scales
            self.mins = torch.empty(0) if blocks.mins is None else blocks.mins

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            rows = self.head.blocks(ids)
        else:
            rows = Int4Blocks(self.packed[ids], self.scales[ids],
                              self.mins[ids] if self.mins.numel() else None)
        return rows.dequantize().to(self.dtype)


class Int8Embedding(nn.Module):
    """A token embedding kept in a file's 8-bit blocks (any :class:`Int8Blocks` form); a lookup
    dequantizes the rows it reads, to exactly the floats of the whole table dequantized. Tied to
    an 8-bit LM head on the kernel (a Q4_K_M file's Q6_K table), it reads the head's tiled
    blocks: one copy of the table, not two (a 1B model's 49152 rows: 126 MB fewer)."""

    def __init__(self, blocks: Int8Blocks | Int8BlockLinear, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.head = blocks if isinstance(blocks, Int8BlockLinear) else None
        if isinstance(blocks, Int8BlockLinear):
            self.codes, self.scales, self.mins = blocks.codes, blocks.scales, blocks.mins
        else:  # a file's blocks may still be views of its map: kept, they are copied
            self.codes, self.scales = blocks.codes.contiguous(), blocks.scales
            self.mins = torch.empty(0) if blocks.mins is None else blocks.mins

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            rows = self.head.blocks(ids)
        else:
            rows = Int8Blocks(self.codes[ids], self.scales[ids],
                              self.mins[ids] if self.mins.numel() else None)
        return rows.dequantize().to(self.dtype)


class Int8BlockLinear(nn.Module):
    """y = x @ dequant(w).T + b with a file's own 8-bit blocks, any :class:`Int8Blocks` form
    (Q8_0, Q5_0, Q5_1, Q5_K, Q6_K, or a projection fused of those and 4-bit parts), on
    :mod:`core.models.kernels`' ``q8_matmul`` (activations in int8 per block of 32, as llama.cpp
    computes these types; each row's result independent of its batch). Tiled for it: (tiles of
    8 rows, in / 32 blocks, 256) int8 codes, byte 4 * r + q of run i being row r's code
    4 * i + q; (tiles, in / 32, 8) scales, or (tiles, in / 16, 8) with two a block, and
    (tiles, in / 32, 8) minimums (none: empty), in the blocks' float16 or float32.

    Tiles a file's bytes were written into (:class:`Tiles`) may be smaller, as the file:
    ``kernel`` says which kernel reads them, the same outputs as ``q8_matmul``'s in fewer bytes
    a weight:

    - ``q6`` (a Q6_K file's blocks, also from :attr:`Int8Blocks.six_bits`): ``q6_matmul``, 6 bits
      a code, (tiles, in / 32, 192) uint8, with the file's (tiles, in / 16, 8) int8 scales as
      ``scales`` and (tiles, in / 256, 8) float16 multipliers as ``super_scales``: 0.82 bytes a
      weight where the 8-bit form reads 1.25;
    - ``q5`` (Q5_0, Q5_1): ``q5_matmul``, 5 bits a code, (tiles, in / 32, 160) uint8, with
      float16 ``scales`` and ``mins`` (Q5_0: none), 0.69 or 0.75 bytes a weight;
    - ``q5k`` (Q5_K): ``q5k_matmul``, codes as ``q5``, the file's (tiles, in / 32, 2, 8) 6-bit
      scale and minimum codes as ``scales`` and (tiles, in / 256, 2, 8) float16 d and dmin as
      ``super_scales``: 0.70 bytes a weight."""

    def __init__(self, blocks: Int8Blocks | Tiles, bias: torch.Tensor | None,
                 five_bits: bool = False) -> None:
        """``blocks``: a file's, tiled here, or :class:`Tiles` already in the layout.
        ``five_bits``: the blocks' codes are 0..31 (-16..15 without minimums) with one scale
        a block, which ``q5_matmul`` reads in 5 bits (``int5``)."""
        super().__init__()
        self.out_features, self.in_features = blocks.shape
        self.bias = None if bias is None else bias.detach()
        self.super_scales = torch.empty(0, dtype=torch.float16)
        self.kernel = "q8"
        if isinstance(blocks, Tiles):
            assert blocks.kernel in ("q8", "q6", "q5", "q5k"), blocks.kernel
            self.kernel = blocks.kernel
            self.codes, self.scales, self.mins = blocks.codes, blocks.scales, blocks.mins
            if blocks.kernel == "q5k":
                self.scales = blocks.sub_scales
            if blocks.kernel in ("q6", "q5k"):
                self.super_scales = blocks.super_scales
            return
        if blocks.six_bits:  # Q6_K rows are whole super-blocks
            self.kernel = "q6"
            packed = torch.ops.infermcp.q6_pack(tile(blocks.codes, kept=False))
            self.codes = pages.contiguous(packed)
            self.scales = tile(blocks.sub_scales)  # type: ignore[arg-type]
            self.super_scales = tile(blocks.super_scales)  # type: ignore[arg-type]
            self.mins = torch.empty(0)
            return
        # 5 bits: Q5_0's codes q - 16 go in as q (before tiling: padding rows' stay zero)
        codes = blocks.codes + 16 if five_bits and blocks.mins is None else blocks.codes
        self.codes, self.scales = tile(codes, kept=not five_bits), tile(blocks.scales)
        self.mins = torch.empty(0, dtype=blocks.scales.dtype) if blocks.mins is None \
            else tile(blocks.mins)
        if five_bits:
            assert blocks.scales_per_block == 1
            self.kernel = "q5"
            self.codes = pages.contiguous(five_bit_tiles(self.codes))

    def blocks(self, index: torch.Tensor | None = None) -> Int8Blocks:
        """The tiled blocks of rows ``index`` (default: every row), as they were before (the
        5-bit ones as the file's decoder gives them: Q5_0's codes q - 16)."""
        rows = torch.arange(self.out_features) if index is None else index
        if self.kernel == "q6":
            return Int8Blocks.from_q6_k(six_bit_rows(self.codes, rows),
                                        tile_rows(self.scales, rows, True),
                                        tile_rows(self.super_scales, rows, True))
        if self.kernel == "q5k":
            return Int8Blocks(five_bit_rows(self.codes, rows), *k_quant_scales(
                tile_pairs_rows(self.scales, rows), tile_pairs_rows(self.super_scales, rows)))
        mins = tile_rows(self.mins, rows, True) if self.mins.numel() else None
        if self.kernel == "q5":
            codes = five_bit_rows(self.codes, rows)
            return Int8Blocks(codes if mins is not None else codes - 16,
                              tile_rows(self.scales, rows, True), mins)
        return Int8Blocks(tile_rows(self.codes, rows), tile_rows(self.scales, rows, True), mins)

    def dequantized(self) -> torch.Tensor:
        """The float32 (out, in) weight the tiled codes stand for."""
        return self.blocks().dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops, n = torch.ops.infermcp, self.out_features
        if self.kernel == "q6":
            out: torch.Tensor = ops.q6_matmul(x.float(), self.codes, self.scales,
                                              self.super_scales, n)
        elif self.kernel == "q5k":
            out = ops.q5k_matmul(x.float(), self.codes, self.scales, self.super_scales, n)
        elif self.kernel == "q5":
            out = ops.q5_matmul(x.float(), self.codes, self.scales, self.mins, n)
        else:
            out = ops.q8_matmul(x.float(), self.codes, self.scales, self.mins, n)
        out = out.to(x.dtype)
        return out if self.bias is None else out + self.bias


class PartsLinear(nn.Module):
    """A fused projection run part by part, each on its own kernel (:class:`MixedBlocks`: a
    Q4_K_M's 4-bit query and key, its 6-bit value), the outputs side by side."""

    def __init__(self, parts: list[nn.Module], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([part(x) for part in self.parts], dim=-1)
        return out if self.bias is None else out + self.bias


class BF16Linear(nn.Module):
    """A linear layer that keeps bfloat16 weights and computes in bfloat16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight.detach().to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


KERNELS: dict[str, type[nn.Module]] = {"int8": Int8Linear, "int4": Int4Linear,
                                       "f16": F16Linear, "bf16": BF16Linear}


def can_quantize(kind: str, linear: nn.Linear) -> bool:
    """Whether ``kind`` applies to this layer's shape (4- and 5-bit blocks need whole ones)."""
    return kind not in ("int4", "int5") or linear.in_features % BLOCK == 0


# The output projection of a 4-bit model stays at 16 bits, as llama.cpp keeps its 4-bit types'
# output weight at 6 or 8 bits. The default model's perplexity, over four runs whose MLP
# activations were scaled by 1, 1 +- 1e-6 and 1 + 3e-7 (int8 activations make it move with
# rounding noise): 22.40-22.61 with a 4-bit LM head, 21.30-21.56 with an 8-bit one (float32 20.93).
# Not fbgemm's int8: it quantizes the activations of a whole batch with one scale, so a
# sequence's logits, and its greedy tokens, changed with the requests batched beside it.
# A 5-bit head stays 5-bit: the default model's perplexity under int5 (re-quantized from its
# 4-bit file) was 24.05 with it and 23.90 with a float16 one, inside the rounding noise.
OUTPUT_LAYER_KIND = {"int4": "f16"}


def quantize_linears(module: nn.Module, kind: str, output_layer: str = "lm_head",
                     own_kernels: bool = False) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by its ``kind`` form (the one named
    ``output_layer`` by its :data:`OUTPUT_LAYER_KIND` form); returns how many. ``own_kernels``:
    :mod:`core.models.kernels` were built, so the formats that have a kernel there use it."""
    count = 0
    for name, child in module.named_children():
        layer_kind = OUTPUT_LAYER_KIND.get(kind, kind) if name == output_layer else kind
        if isinstance(child, nn.Linear) and can_quantize(layer_kind, child):
            setattr(module, name, _quantized(layer_kind, child, own_kernels))
            count += 1
        else:
            count += quantize_linears(child, kind, output_layer, own_kernels)
    return count


def _quantized(kind: str, linear: nn.Linear, own_kernels: bool) -> nn.Module:
    if kind == "int4":
        return Int4Linear(linear.weight, linear.bias, own_kernel=own_kernels)
    if kind == "int5":
        assert own_kernels, "int5 runs on our kernels alone (ModelRunner makes it int8 elsewhere)"
        return Int8BlockLinear(Int8Blocks.quantize_5_bits(linear.weight), linear.bias,
                               five_bits=True)
    return KERNELS[kind](linear.weight, linear.bias)


def keeps_blocks(weight: Weight, kind: str, own_kernels: bool, as_filed: bool = False
                 ) -> bool:
    """Whether :func:`build_linear` runs ``weight``'s blocks as they are (losslessly): 4-bit
    ones under ``int4``, 8-bit ones under ``int8`` where the kernels run (a file's 5-bit ones
    among them), a file's 5-bit ones under ``int5``, and any in the file's own format
    (``as_filed``: a Q4_K_M file's Q6_K tensors stay 6-bit under its int4)."""
    if isinstance(weight, MixedBlocks):
        return all(keeps_blocks(part, kind, own_kernels, as_filed) for part in weight.parts)
    if isinstance(weight, torch.Tensor):
        return False
    if form(weight) is Int4Blocks:
        return kind == "int4" or as_filed
    if kind == "int5" and not as_filed:
        return own_kernels and isinstance(weight, FileBlocks) and weight.kernel in ("q5", "q5k")
    return own_kernels and (kind == "int8" or as_filed)


def build_linear(weight: Weight, bias: torch.Tensor | None, kind: str,
                 own_kernels: bool, dtype: torch.dtype, as_filed: bool = False) -> nn.Module:
    """A linear layer from weights as a file holds them: blocks as they are where
    :func:`keeps_blocks` says so (``as_filed``: the model runs in the file's own format);
    anything else goes through float32 (this one tensor's, while the model loads), then into
    the format ``kind``."""
    kept = keeps_blocks(weight, kind, own_kernels, as_filed)
    if kept and isinstance(weight, MixedBlocks):
        return PartsLinear([build_linear(part, None, kind, own_kernels, dtype, as_filed)
                            for part in weight.parts], bias)
    if isinstance(weight, MixedBlocks):  # one form, as the file's blocks or through floats
        return build_linear(weight.merged(), bias, kind, own_kernels, dtype, as_filed)
    if kept and own_kernels and isinstance(weight, FileBlocks):  # straight into the tiles
        if weight.form is Int4Blocks:
            return Int4Linear(weight.tiles(), bias, own_kernel=True)
        return Int8BlockLinear(weight.tiles(), bias)
    if isinstance(weight, FileBlocks):
        weight = concrete(weight)
    if kept and isinstance(weight, Int4Blocks):
        return Int4Linear(weight, bias, own_kernel=own_kernels, dtype=dtype)
    if kept and isinstance(weight, Int8Blocks):
        return Int8BlockLinear(weight, bias)
    floats = weight.dequantize() if isinstance(weight, Int4Blocks | Int8Blocks) else weight
    with torch.device("meta"):
        linear = nn.Linear(floats.shape[1], floats.shape[0], bias=bias is not None)
    linear.weight = nn.Parameter(floats.to(dtype), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    if kind == "none" or not can_quantize(kind, linear):
        return linear
    return _quantized(kind, linear, own_kernels)


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by the module's weights (each storage counted once), KV caches excluded."""
    seen: dict[int, int] = {}
    for sub in module.modules():
        if isinstance(sub, Int8Linear | F16Linear):  # fbgemm's packed weights are not tensors
            seen[id(sub)] = sub.nbytes
            continue
        tensors = [*sub._parameters.values(), *sub._buffers.values(),
                   *(v for k, v in vars(sub).items()
                     if isinstance(v, torch.Tensor) and not k.endswith("_cache"))]
        for t in tensors:
            if t is not None and t.device.type != "meta":
                seen.update([_storage(t)])
    return sum(seen.values())


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(identity, bytes) of the memory behind ``t``; oneDNN-packed weights have no storage."""
    try:
        storage = t.untyped_storage()
    except NotImplementedError:
        return id(t), t.numel() * t.element_size()
    return storage.data_ptr(), storage.nbytes()
