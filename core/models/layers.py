"""The layers the model families share beside attention (:mod:`core.models.attention`):
linear layers packed for oneDNN, RMSNorm, the gated MLP and the sparse mixture of experts.
On the CPU in float32 the layers run :mod:`core.models.kernels`' operations once
:func:`use_own_kernels` turns them on.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from core.models.attention import Attention
from core.models.norm import RMSNorm
from core.models.quant import experts_alike, experts_forward


def _linear_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                      ) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


# Scripted, so that a decode-graph trace (core.engine.decode_graph) records one call to it: the
# tracer cannot record the op's empty list of scalars itself.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's, see core.engine.decode_graph
    linear_pointwise = torch.jit.script(_linear_pointwise)


class PackedLinear(nn.Module):
    """A linear layer whose weight oneDNN has re-laid out for small-batch CPU matmuls.

    On this class of CPU it runs about twice as fast as the default BLAS path for decode-sized
    batches, and each row's result does not depend on the batch size.
    """

    def __init__(self, linear: nn.Linear, batch_hint: int = 16) -> None:
        super().__init__()
        self.out_features = linear.out_features
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = linear_pointwise(x, self.weight, self.bias)
        return out


def held_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors ``module`` itself holds: parameters, buffers, and plain attributes such as a
    layer's slice of the KV cache (not its submodules')."""
    values = [*module._parameters.values(), *module._buffers.values(), *vars(module).values()]
    return [v for v in values if isinstance(v, torch.Tensor)]


def can_pack_linears(dtype: torch.dtype, device: torch.device) -> bool:
    """Packing applies to float32 on the CPU when this torch build has the oneDNN ops."""
    return (device.type == "cpu" and dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack_linears(module: nn.Module) -> None:
    """Replace every ``nn.Linear`` inside ``module`` with a :class:`PackedLinear`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child))
        else:
            pack_linears(child)


ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
# act(gate) * up in one pass (kernels/silu_mul.cpp), by activation
GATED_KERNELS = {"silu": lambda gate_up: torch.ops.infermcp.silu_mul(gate_up),
                 "gelu_pytorch_tanh": lambda gate_up: torch.ops.infermcp.gelu_tanh_mul(gate_up)}


class MLP(nn.Module):
    """The gated MLP: down(act(gate(x)) * up(x)), with gate and up fused in one projection;
    ``act`` silu (most families) or tanh-approximated gelu (Gemma)."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False,
                 act: str = "silu") -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj: nn.Module = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj: nn.Module = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = act
        self.own_kernels = False  # see use_own_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.own_kernels and gate_up.dim() == 2:
            return self.down_proj(GATED_KERNELS[self.act](gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return self.down_proj(ACTIVATIONS[self.act](gate) * up)


class SparseMoE(nn.Module):
    """A mixture of gated-MLP experts (Qwen3-MoE): a router's softmax picks ``top_k`` experts
    a token (their weights renormalized to sum 1 when ``norm_topk_prob``), and each expert
    runs once a step on all the rows routed to it, as one matmul; its outputs, weighted, are
    added into their rows. The loop is over the experts a step uses, never over tokens."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 norm_topk_prob: bool) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.router = nn.Parameter(torch.empty(num_experts, hidden_size), requires_grad=False)
        self.experts = nn.ModuleList(MLP(hidden_size, intermediate_size)
                                     for _ in range(num_experts))
        # whether a token's chosen experts run in two kernel calls (_experts_at_once): their
        # layers alike on the 4-bit kernel, decided once by use_own_kernels
        self.at_once = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.linear(x, self.router).float().softmax(-1)  # (tokens, experts)
        weights, chosen = probs.topk(self.top_k, -1)  # (tokens, top_k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights.to(x.dtype).flatten()
        if x.shape[0] == 1:  # one token (a decode step alone): no gathering and scattering
            out = torch.zeros_like(x)
            experts = chosen[0].tolist()
            # added in the experts' order, as the path below adds them
            ranks = sorted(range(self.top_k), key=experts.__getitem__)
            mlps = [self.experts[experts[k]] for k in ranks]
            ys = _experts_at_once(mlps, x) if self.at_once else None
            for i, k in enumerate(ranks):
                y = mlps[i](x) if ys is None else ys[i:i + 1]
                out.add_(y * weights[k:k + 1])
            return out
        order = chosen.flatten().argsort(stable=True)  # (token, k) pairs grouped by expert
        counts = torch.bincount(chosen.flatten(), minlength=len(self.experts)).tolist()
        out = torch.zeros_like(x)
        start = 0
        for expert, count in enumerate(counts):  # the experts the step uses, in order
            if count:
                pairs = order[start:start + count]
                rows = pairs // self.top_k
                out.index_add_(0, rows, self.experts[expert](x[rows]) * weights[pairs].unsqueeze(1))
                start += count
        return out


def _experts_at_once(mlps: list[MLP], x: torch.Tensor) -> torch.Tensor:
    """One token through each of ``mlps``, (len, hidden), in two kernel calls for all of them
    (:func:`core.models.quant.experts_forward`): their layers are alike on the 4-bit kernel
    (:func:`_alike_on_kernels`)."""
    gate_up = experts_forward([mlp.gate_up_proj for mlp in mlps], x.expand(len(mlps), -1))
    return experts_forward([mlp.down_proj for mlp in mlps], GATED_KERNELS[mlps[0].act](gate_up))


def _alike_on_kernels(mlps: list[MLP]) -> bool:
    """Whether :func:`_experts_at_once` takes any of ``mlps``: all on our kernels, with one
    activation, their projections alike on the 4-bit kernel."""
    return (all(mlp.own_kernels and mlp.act == mlps[0].act for mlp in mlps)
            and experts_alike([mlp.gate_up_proj for mlp in mlps])
            and experts_alike([mlp.down_proj for mlp in mlps]))


def use_own_kernels(model: nn.Module, on: bool) -> None:
    """Whether the layers of ``model`` run :mod:`core.models.kernels`' operations instead of
    torch's: decided once, by whoever builds the model, from whether the kernels were built and
    the model is float32 on the CPU (what they take). Off until this is called."""
    for module in model.modules():
        if isinstance(module, RMSNorm | Attention | MLP):
            module.own_kernels = on
    for module in model.modules():  # once its experts know
        if isinstance(module, SparseMoE):
            module.at_once = on and _alike_on_kernels(list(module.experts))  # type: ignore[arg-type]
