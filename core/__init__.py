"""The infermcp engine: one API that every front end (HTTP, MCP) uses.

Describe the models to serve as :class:`ModelSpec` s, load them in the background with a
:class:`ModelRegistry` (which also routes the ``model`` field of every request), and run requests
through :mod:`core.serving.handlers`. Lower down: stream a request with
``ServedModel.engine.generate(EngineRequest(...))``, abort with ``engine.abort(request_id)``.

The packages, each importing only those before it (``tests/test_import_layers.py`` checks it):

- :mod:`core.errors`: the one error tree;
- :mod:`core.models`: model families on shared layers, weight formats, loaders, tokenizer,
  AVX2 kernels;
- :mod:`core.engine` and :mod:`core.embedding`: generation (``schedule → run → postprocess``)
  and sentence embeddings;
- :mod:`core.chat`: messages, tool prompts and grammars, output parsing;
- :mod:`core.serving`: model specs, the registry, the handlers both front ends call;
- :mod:`core.responses`: the Responses API and its store.

The names below are imported on first use, so ``import core`` (and ``core.errors``) stays light:
no torch, no llguidance.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.engine.async_engine import AsyncEngine, RequestStream
    from core.engine.outputs import EngineRequest, EngineStats, RequestOutput
    from core.engine.params import SamplingParams
    from core.errors import (
        ContextLengthError,
        EngineUnavailableError,
        InferError,
        InvalidRequestError,
        ModelLoadError,
        ModelNotFoundError,
        NotFoundError,
        OverloadedError,
    )
    from core.serving.chat_model import Completion, ServedModel, collect, load_chat_model
    from core.serving.embedding_model import EmbeddingModel, load_embedding_model
    from core.serving.registry import ModelEntry, ModelRegistry
    from core.serving.specs import ModelSpec, load_config

_HOMES = {
    "core.engine.async_engine": ("AsyncEngine", "RequestStream"),
    "core.engine.outputs": ("EngineRequest", "EngineStats", "RequestOutput"),
    "core.engine.params": ("SamplingParams",),
    "core.errors": ("ContextLengthError", "EngineUnavailableError", "InferError",
                    "InvalidRequestError", "ModelLoadError", "ModelNotFoundError", "NotFoundError",
                    "OverloadedError"),
    "core.serving.chat_model": ("Completion", "ServedModel", "collect", "load_chat_model"),
    "core.serving.embedding_model": ("EmbeddingModel", "load_embedding_model"),
    "core.serving.registry": ("ModelEntry", "ModelRegistry"),
    "core.serving.specs": ("ModelSpec", "load_config"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "AsyncEngine",
    "Completion",
    "ContextLengthError",
    "EmbeddingModel",
    "EngineRequest",
    "EngineStats",
    "EngineUnavailableError",
    "InferError",
    "InvalidRequestError",
    "ModelEntry",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRegistry",
    "ModelSpec",
    "NotFoundError",
    "OverloadedError",
    "RequestOutput",
    "RequestStream",
    "SamplingParams",
    "ServedModel",
    "collect",
    "load_chat_model",
    "load_config",
    "load_embedding_model",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME_OF[name]), name)
