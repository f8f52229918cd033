"""Recorded graphs of the decode step: the model's forward pass without Python in the loop.

A decode step of the 135M default model is ~1,500 small tensor operations; run eagerly on a
2-core CPU, Python's work between them (module calls, argument parsing) took about as long as
the arithmetic. A TorchScript trace records the step once and replays it from C++, with
bit-identical outputs. Measured by ``bench.engine_bench`` (f16 weights): batch 1 went from 46.8
to 22.6 ms a step, batch 16 from 92.6 to 78.9 ms.

``torch.jit.trace`` is deprecated in favour of ``torch.compile`` and ``torch.export``, which were
measured too: inductor compiled this model for 130 s, then 160 s more for each new batch shape, on
this machine; a trace takes half a second and serves every batch size and context length.

A trace records one path through the Python branches it meets, so there is one graph per path.
Decode-only steps take two: whether some rows are padded (``attn_mask``), and whether there is
one row or more (int8 weights scale rows only when there are several). Steps that prefill
prompt chunks run eagerly. The trace registers every tensor and packed weight it reads as an
attribute, not a constant, so the graph writes the live KV cache in place and holds no copies.
"""

from __future__ import annotations

import logging
import threading
import warnings

import torch
from torch import nn

from core.models.attention import AttentionMetadata
from core.models.decoder import CausalLM
from core.models.layers import held_tensors

log = logging.getLogger(__name__)

GraphKey = tuple[bool, bool]  # (one row, padded rows)

_trace_lock = threading.Lock()  # the tracer is process-wide state: one trace at a time


class _DecodeStep(nn.Module):
    """What a trace records: the model's forward over decoding rows. Every tensor and packed
    weight of the model is registered on this flat module, so the trace reads them as
    attributes; building a traced module per submodule took 2 s, this takes 0.5 s."""

    model: CausalLM

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: no scripted hierarchy
        seen: set[int] = set()
        for module in model.modules():
            packed = [v for v in vars(module).values() if isinstance(v, torch.ScriptObject)]
            for value in [*held_tensors(module), *packed]:  # packed: fbgemm's weights
                if id(value) in seen:
                    continue
                seen.add(id(value))
                if isinstance(value, torch.Tensor):  # weights, rope tables, the KV cache
                    self.register_buffer(f"tensor{len(seen)}", value, persistent=False)
                else:
                    setattr(self, f"object{len(seen)}", value)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                gather_index: torch.Tensor, attn_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        meta = AttentionMetadata(slot_mapping, [], gather_index, attn_mask)
        out: torch.Tensor = self.model(ids, positions, meta)
        return out


class DecodeGraphs:
    """The recorded decode steps of one model (with its KV cache attached), traced on first
    use of each path and replayed after."""

    def __init__(self, model: CausalLM) -> None:
        self.model = model
        self.graphs: dict[GraphKey, torch.jit.ScriptModule] = {}

    @staticmethod
    def applies(meta: AttentionMetadata) -> bool:
        """Decode-only steps: every row one token that reads its context by gather."""
        return not meta.chunks and meta.gather_index is not None

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
                 ) -> torch.Tensor:
        assert meta.gather_index is not None
        args = [ids, positions, meta.slot_mapping, meta.gather_index]
        if meta.attn_mask is not None:
            args.append(meta.attn_mask)
        key = (ids.shape[0] == 1, meta.attn_mask is not None)
        graph = self.graphs.get(key)
        # The executor's optimizing passes took 20 s on the first calls of a 30-layer graph
        # and bought nothing measurable: run the graph as recorded.
        with torch.jit.optimized_execution(False):
            if graph is None:
                graph = self.graphs[key] = self._trace(args)
            out: torch.Tensor = graph(*args)
        return out

    def _trace(self, args: list[torch.Tensor]) -> torch.jit.ScriptModule:
        with _trace_lock, warnings.catch_warnings():
            # deprecation of torch.jit (see the module's docstring); the branch on one row
            # that int8 takes is recorded knowingly (one row is part of the graph's key)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            graph: torch.jit.ScriptModule = torch.jit.trace(
                _DecodeStep(self.model), tuple(args), check_trace=False, _store_inputs=False)
        log.debug("recorded a decode graph for %d rows%s", args[0].shape[0],
                  ", padded" if len(args) > 4 else "")
        return graph
