"""The Starlette application: routes, the error table, and the model loaded in the background."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.serving import ModelSlot, ServedModel
from http_api import chat, completions
from http_api.errors import EXCEPTION_HANDLERS

log = logging.getLogger("infermcp.http")


async def health(request: Request) -> Response:
    healthy, report = request.app.state.slot.health()
    return JSONResponse(report, status_code=200 if healthy else 503)


async def list_models(request: Request) -> Response:
    model: ServedModel = request.app.state.slot.require()
    return JSONResponse({"object": "list", "data": [model.card()]})


def create_app(load: Callable[[], ServedModel], on_load_error: Callable[[str], None] | None = None
               ) -> Starlette:
    """The OpenAI-compatible app; ``load`` runs in a background thread at startup."""
    slot = ModelSlot(load, on_load_error or (lambda msg: log.error("model failed: %s", msg)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        slot.start()
        yield
        slot.shutdown()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/completions", completions.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.slot = slot
    return app
