"""The weight formats a chat model may run in, by every name users give them.

The one list both the command line, ``models.toml`` and ``POST /re_isq`` read (and what the KV
cache may hold); torch-free, so the command line answers ``--help`` and refuses a bad ``--isq``
without importing torch.
:mod:`core.models.quant` holds the layouts and kernels behind each format.
"""

from __future__ import annotations

from typing import Literal, get_args

from core.errors import InvalidRequestError

Format = Literal["int8", "int5", "int4", "f16", "bf16", "none", "auto"]

ALIASES: dict[str, Format] = {
    "8": "int8", "int8": "int8", "q8_0": "int8", "q8_1": "int8", "q8k": "int8", "q8_k": "int8",
    "5": "int5", "int5": "int5", "q5_0": "int5", "q5_1": "int5", "q5k": "int5", "q5_k": "int5",
    "4": "int4", "int4": "int4", "q4_0": "int4", "q4_1": "int4", "q4k": "int4", "q4_k": "int4",
    "f16": "f16", "fp16": "f16", "float16": "f16", "half": "f16",
    "bf16": "bf16", "bfloat16": "bf16", "16": "bf16",
    "none": "none", "f32": "none", "fp32": "none", "float32": "none", "32": "none",
    "auto": "auto",
}


# What a chat model's KV cache may hold: ``auto`` is float16 beside weights of 8 bits or fewer on
# the CPU kernels, else the model's dtype (core.engine.model_runner.ModelRunner)
KvCacheDtype = Literal["auto", "float32", "float16"]
KV_CACHE_DTYPES: tuple[KvCacheDtype, ...] = get_args(KvCacheDtype)


def resolve(name: str) -> Format:
    """The canonical format (``int8``, ``int5``, ``int4``, ``f16``, ``bf16``, ``none`` or
    ``auto``) of a user's name."""
    kind = ALIASES.get(str(name).strip().lower())
    if kind is None:
        raise InvalidRequestError(
            f"unknown quantization type {name!r}; accepted (case-insensitive): "
            f"{', '.join(ALIASES)}", param="ggml_type", code="invalid_quantization_type")
    return kind
