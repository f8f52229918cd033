"""The infermcp engine: one API that every front end (HTTP, MCP) uses.

Load a model with :func:`load_served_model`, stream a request with
``ServedModel.engine.generate(EngineRequest(...))``, abort with ``engine.abort(request_id)``.
"""

from core.async_engine import AsyncEngine, RequestStream
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
from core.serving import Completion, LoadOptions, ServedModel, collect, load_served_model

__all__ = [
    "AsyncEngine",
    "Completion",
    "ContextLengthError",
    "EngineRequest",
    "EngineStats",
    "EngineUnavailableError",
    "InferError",
    "InvalidRequestError",
    "LoadOptions",
    "ModelLoadError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "RequestOutput",
    "RequestStream",
    "SamplingParams",
    "ServedModel",
    "collect",
    "load_served_model",
]
