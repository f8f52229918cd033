"""The Starlette application: routes, the error table, and the models loaded in the background."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from core.registry import ModelRegistry
from http_api import chat, completions, embeddings
from http_api.body import MAX_BODY_BYTES
from http_api.errors import EXCEPTION_HANDLERS

log = logging.getLogger("infermcp.http")


async def health(request: Request) -> Response:
    healthy, report = request.app.state.models.health()
    return JSONResponse(report, status_code=200 if healthy else 503)


async def list_models(request: Request) -> Response:
    models: ModelRegistry = request.app.state.models
    return JSONResponse({"object": "list", "data": models.cards()})


def create_app(models: ModelRegistry, *, routes: Sequence[BaseRoute] = (),
               lifespans: Sequence[Callable[[], AbstractAsyncContextManager[None]]] = (),
               max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The OpenAI-compatible app over ``models`` (loaded in the background at startup).

    ``routes`` and ``lifespans`` let the caller serve more on the same port (the MCP transports)
    without this package knowing about them. The lifespans are exited when the server stops,
    after every request has finished or been aborted (see ``http_api/server.py``): that is where
    resources that must be flushed and closed (a response store) are closed, before the models
    are shut down.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        models.start()
        async with contextlib.AsyncExitStack() as stack:
            for extra in lifespans:
                await stack.enter_async_context(extra())
            yield
        models.shutdown()

    openai_routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/completions", completions.completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings.embeddings, methods=["POST"]),
    ]
    app = Starlette(routes=[*openai_routes, *routes], exception_handlers=EXCEPTION_HANDLERS,
                    lifespan=lifespan)
    app.state.models = models
    app.state.max_body_bytes = max_body_bytes
    return app
