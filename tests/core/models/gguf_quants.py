"""Quantization for the tiny GGUF files of the tests, in the types llama.cpp writes.

gguf-py 0.19 quantizes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (and TQ1_0, TQ2_0, MXFP4)
but only dequantizes the K-quants, so Q4_K, Q5_K and Q6_K are encoded here (plain min/max
scales, not llama.cpp's search; the layout is exact, checked against gguf-py's ``dequantize``).
"""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType

K_QUANTS = (QType.Q4_K, QType.Q5_K, QType.Q6_K)


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


# where a block holds float16s: d (and dmin or m), as bytes from its start
FLOAT16_AT = {QType.Q8_0: (0,), QType.Q5_0: (0,), QType.Q5_1: (0, 2), QType.Q5_K: (0, 2),
              QType.Q6_K: (208,), QType.Q4_K: (0, 2), QType.Q4_0: (0,), QType.Q4_1: (0, 2)}


def random_bytes(qtype: QType, rows: int = 6, columns: int = 512) -> np.ndarray:
    """(rows, bytes) of ``qtype``'s blocks: random bytes, every bit pattern of codes and
    scales, but finite float16s."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    raw = rng.integers(0, 256, (rows, columns // block, size), dtype=np.uint8)
    for at in FLOAT16_AT[qtype]:
        d = (rng.standard_normal((rows, columns // block, 1)) / 100).astype(np.float16)
        raw[..., at:at + 2] = d.view(np.uint8)
    return raw.reshape(rows, -1)
