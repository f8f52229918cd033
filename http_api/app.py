"""The Starlette application: the route table, the error table, the operator's middleware, and
the models loaded in the background."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from core.responses.mcp import McpToolHost
from core.responses.store import ResponseStore, SQLiteResponseStore
from core.serving.registry import ModelRegistry
from http_api import admin, chat, completions, embeddings, protocol, responses, schemas, tokens
from http_api.access import REQUEST_ID_HEADER, AccessLog
from http_api.auth import BearerAuth
from http_api.body import MAX_BODY_BYTES
from http_api.docs import docs_routes
from http_api.errors import EXCEPTION_HANDLERS
from http_api.metrics import Metrics, metrics
from http_api.openapi import ApiRoute, api_routes, openapi_document

log = logging.getLogger("infermcp.http")

DESCRIPTION = ("An OpenAI-compatible API over local models. The same models are served over "
               "MCP at /mcp (Streamable HTTP) and /sse (see MCP_SERVER.md). Fields marked "
               "Extension are not in OpenAI's API.")


async def health(request: Request) -> Response:
    """Each model's status and the default chat model's engine load."""
    healthy, report = request.app.state.models.health()
    mcp = request.app.state.mcp_host.health() if request.app.state.mcp_host else None
    if mcp:  # the configured MCP servers: reported, never a reason to be unhealthy
        report["mcp"] = mcp
    return JSONResponse(report, status_code=200 if healthy else 503)


async def list_models(request: Request) -> Response:
    """Every served model, the default chat model first."""
    models: ModelRegistry = request.app.state.models
    return JSONResponse({"object": "list", "data": models.cards()})


# Every documented route: one row serves it and documents it (see http_api/openapi.py).
API_ROUTES: list[ApiRoute] = [
    ApiRoute("GET", "/health", health, "Server and model health", response=schemas.Health,
             errors=(), other=((503, schemas.Health),), tag="Server"),
    ApiRoute("GET", "/v1/models", list_models, "List the served models",
             response=schemas.ModelList, errors=(503,)),
    ApiRoute("POST", "/v1/chat/completions", chat.chat_completions, "Chat completion",
             protocol.ChatCompletionRequest, schemas.ChatCompletion, schemas.ChatCompletionChunk),
    ApiRoute("POST", "/v1/completions", completions.completions, "Text completion",
             protocol.CompletionRequest, schemas.Completion, schemas.CompletionChunk),
    ApiRoute("POST", "/v1/embeddings", embeddings.embeddings, "Embedding vectors",
             protocol.EmbeddingCreateRequest, schemas.EmbeddingList),
    ApiRoute("POST", "/v1/responses", responses.create_response, "Create a response",
             protocol.ResponseCreateRequest, schemas.ResponseObject, schemas.ResponseStreamEvent,
             stream_done=False),
    ApiRoute("GET", "/v1/responses/{response_id}", responses.retrieve_response,
             "Retrieve a stored response", response=schemas.ResponseObject, errors=(404,)),
    ApiRoute("DELETE", "/v1/responses/{response_id}", responses.remove_response,
             "Delete a stored response and its conversation", response=schemas.ResponseDeleted,
             errors=(404,)),
    ApiRoute("POST", "/tokenize", tokens.tokenize, "Tokenize a prompt or chat messages",
             protocol.TokenizeRequest, schemas.TokenizeResponse, tag="Tokens"),
    ApiRoute("POST", "/detokenize", tokens.detokenize, "Token ids back to text",
             protocol.DetokenizeRequest, schemas.DetokenizeResponse, tag="Tokens"),
    ApiRoute("POST", "/re_isq", admin.re_isq, "Re-quantize the chat model in place",
             protocol.ReIsqRequest, schemas.ReIsqResponse, tag="Server"),
    ApiRoute("GET", "/metrics", metrics, "Prometheus metrics", errors=(), tag="Server",
             media_type="text/plain"),
]


def operator_middleware(routes: Sequence[BaseRoute], metrics: Metrics | None,
                        api_key: str | None = None, cors_origins: Sequence[str] = ()
                        ) -> list[Middleware]:
    """Outermost first: request id + access log + request metrics, CORS (before auth, so
    preflights need no key), then the API key check."""
    stack = [Middleware(AccessLog, routes=routes,
                        on_request=metrics.on_request if metrics is not None else None)]
    if cors_origins:
        stack.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                                allow_headers=["authorization", "content-type",
                                               REQUEST_ID_HEADER, "mcp-session-id",
                                               "mcp-protocol-version", "last-event-id"],
                                expose_headers=[REQUEST_ID_HEADER, "mcp-session-id"]))
    if api_key:
        stack.append(Middleware(BearerAuth, api_key=api_key))
    return stack


def create_app(models: ModelRegistry, *, responses_store: ResponseStore | None = None,
               routes: Sequence[BaseRoute] = (),
               lifespans: Sequence[Callable[[], AbstractAsyncContextManager[None]]] = (),
               api_key: str | None = None, cors_origins: Sequence[str] = (),
               max_body_bytes: int = MAX_BODY_BYTES, mcp_host: McpToolHost | None = None
               ) -> Starlette:
    """The OpenAI-compatible app over ``models`` (loaded in the background at startup).

    ``responses_store`` keeps stored responses (default: a SQLite store in the state
    directory; the caller owns and closes a store it passes). ``routes`` and ``lifespans``
    let the caller serve more on the same port (the MCP transports) without this package
    knowing about them. The lifespans are exited when the server stops, after every request
    has finished or been aborted (see ``http_api/server.py``): that is where resources that
    must be flushed and closed (the response store) are closed, before the models are shut
    down. ``api_key`` requires ``Authorization: Bearer`` outside the open paths;
    ``cors_origins`` are the origins allowed cross-origin (none by default). ``mcp_host``
    reaches the MCP servers of the Responses API's ``mcp`` tools (its lifespan is the
    caller's to pass).
    ``app.state.metrics`` is the app's Prometheus registry.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        models.start()
        async with contextlib.AsyncExitStack() as stack:
            for extra in lifespans:
                await stack.enter_async_context(extra())
            yield
        models.shutdown()

    all_routes = [*api_routes(API_ROUTES), *docs_routes(), *routes]
    app_metrics = Metrics(models)
    app = Starlette(routes=all_routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan,
                    middleware=operator_middleware(all_routes, app_metrics, api_key,
                                                   cors_origins))
    app.state.models = models
    app.state.metrics = app_metrics
    app.state.openapi = openapi_document(API_ROUTES, auth=bool(api_key), description=DESCRIPTION)
    app.state.responses = responses_store if responses_store is not None else \
        SQLiteResponseStore()
    app.state.max_body_bytes = max_body_bytes
    app.state.mcp_host = mcp_host
    return app
