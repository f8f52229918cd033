"""The infermcp engine: one API that every front end (HTTP, MCP) uses.

Describe the models to serve as :class:`ModelSpec` s, load them in the background with a
:class:`ModelRegistry` (which also routes the ``model`` field of every request), and run requests
through :mod:`core.handlers`. Lower down: stream a request with
``ServedModel.engine.generate(EngineRequest(...))``, abort with ``engine.abort(request_id)``.
"""

from core.async_engine import AsyncEngine, RequestStream
from core.config import ModelSpec, load_config
from core.embeddings import EmbeddingModel, load_embedding_model
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
from core.outputs import EngineRequest, EngineStats, RequestOutput
from core.params import SamplingParams
from core.registry import ModelEntry, ModelRegistry
from core.serving import Completion, ServedModel, collect, load_chat_model

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
