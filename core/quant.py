"""In-situ quantization (ISQ) of a loaded model's linear layers, with torch's own CPU kernels.

A quantization type is named as in mistral.rs and llama.cpp or by its bit width; each maps to
one weight format here:

- ``int8`` (``8``, ``q8_0``, ``q8_1``, ``q8k``, ``int8``): per-output-channel symmetric int8
  weights, computed by ``aten._weight_int8pack_mm`` (int8 weights, float activations).
- ``int4`` (``4``, ``q4_0``, ``q4_1``, ``q4k``, ``int4``): asymmetric 4-bit weights in groups of
  32 along the input dimension, computed by ``aten._weight_int4pack_mm_for_cpu``.
- ``bf16``: bfloat16 weights (emulated on CPUs without native bf16: smaller, not faster).
- ``none`` (``f32``, ``fp32``, ``float32``): full-precision weights (the default).

Every linear layer is quantized, the LM head included; the token embedding stays in full
precision (a lookup reads one row a token). Re-quantizing always starts from the checkpoint's
weights, so errors do not compound.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import InvalidRequestError

INT4_GROUP_SIZE = 32

ALIASES: dict[str, str] = {
    "8": "int8", "int8": "int8", "q8_0": "int8", "q8_1": "int8", "q8k": "int8", "q8_k": "int8",
    "4": "int4", "int4": "int4", "q4_0": "int4", "q4_1": "int4", "q4k": "int4", "q4_k": "int4",
    "bf16": "bf16", "bfloat16": "bf16", "16": "bf16",
    "none": "none", "f32": "none", "fp32": "none", "float32": "none", "32": "none",
}


def resolve(name: str) -> str:
    """The canonical type (``int8``, ``int4``, ``bf16`` or ``none``) a user's name stands for."""
    kind = ALIASES.get(str(name).strip().lower())
    if kind is None:
        raise InvalidRequestError(
            f"unknown quantization type {name!r}; accepted (case-insensitive): "
            f"{', '.join(ALIASES)}", param="ggml_type", code="invalid_quantization_type")
    return kind


class Int8Linear(nn.Module):
    """y = x @ (w_int8 * scale).T + b with per-output-channel symmetric scales."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)  # (out,)
        self.weight = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.scale = scale.to(weight.dtype)  # the kernel wants the activations' dtype
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scale)
        return out if self.bias is None else out + self.bias


class Int4Linear(nn.Module):
    """y = x @ dequant(w_int4).T + b, 4-bit weights with a scale and zero per group of 32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        out_features, in_features = w.shape
        groups = w.reshape(out_features, in_features // INT4_GROUP_SIZE, INT4_GROUP_SIZE)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-8)
        q = ((groups - low) / scale).round().clamp(0, 15).to(torch.int32)
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.reshape(out_features, in_features), 1)
        # The kernel computes (q - 8) * scale + zero: the zero point is the group's midpoint.
        zero = low + 8 * scale
        self.scales_and_zeros = torch.stack(
            [scale.reshape(out_features, -1), zero.reshape(out_features, -1)], dim=-1
        ).transpose(0, 1).contiguous().to(weight.dtype)  # (groups, out, 2)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.weight, INT4_GROUP_SIZE, self.scales_and_zeros)
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
                                       "bf16": BF16Linear}


def can_quantize(kind: str, linear: nn.Linear) -> bool:
    """Whether ``kind`` applies to this layer's shape (4-bit groups need whole groups)."""
    return kind != "int4" or linear.in_features % INT4_GROUP_SIZE == 0


def quantize_linears(module: nn.Module, kind: str) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by its ``kind`` form; returns how many."""
    kernel = KERNELS[kind]
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and can_quantize(kind, child):
            setattr(module, name, kernel(child.weight, child.bias))
            count += 1
        else:
            count += quantize_linears(child, kind)
    return count


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by the module's weights (each storage counted once), KV caches excluded."""
    seen: dict[int, int] = {}
    for sub in module.modules():
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
