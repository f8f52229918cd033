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
from core.response_store import ResponseStore, SQLiteResponseStore
from http_api import chat, completions, embeddings, responses
from http_api.errors import EXCEPTION_HANDLERS

log = logging.getLogger("infermcp.http")


async def health(request: Request) -> Response:
    healthy, report = request.app.state.models.health()
    return JSONResponse(report, status_code=200 if healthy else 503)


async def list_models(request: Request) -> Response:
    models: ModelRegistry = request.app.state.models
    return JSONResponse({"object": "list", "data": models.cards()})


def create_app(models: ModelRegistry, *, responses_store: ResponseStore | None = None,
               routes: Sequence[BaseRoute] = (),
               lifespans: Sequence[Callable[[], AbstractAsyncContextManager[None]]] = ()
               ) -> Starlette:
    """The OpenAI-compatible app over ``models`` (loaded in the background at startup).

    ``responses_store`` keeps stored responses (default: in memory, lost on exit; the caller
    owns and closes a store it passes). ``routes`` and ``lifespans`` let the caller serve more
    on the same port (the MCP transports) without this package knowing about them.
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
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.retrieve_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.remove_response, methods=["DELETE"]),
    ]
    app = Starlette(routes=[*openai_routes, *routes], exception_handlers=EXCEPTION_HANDLERS,
                    lifespan=lifespan)
    app.state.models = models
    app.state.responses = responses_store if responses_store is not None else \
        SQLiteResponseStore()
    return app
