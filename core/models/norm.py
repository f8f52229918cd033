"""RMSNorm, as every family normalizes (Gemma's 1 + w scale is its weight plus one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, over the last dimension."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.own_kernels = False  # see core.models.layers.use_own_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.own_kernels and x.dim() >= 2:
            out: torch.Tensor = torch.ops.infermcp.rms_norm(x, self.weight, self.eps)
            return out
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
