"""The MCP server: one registration table of tools and resources over the shared engine."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import ToolAnnotations

from core.errors import InferError, ModelNotFoundError
from core.responses.mcp import McpToolHost
from core.responses.store import ResponseStore, SQLiteResponseStore
from core.serving.registry import ModelRegistry
from mcp_server.responses import ResponseTools
from mcp_server.tools import Tools, wait_for_models

INSTRUCTIONS = (
    "infermcp serves local models. Use `chat` for a reply to a conversation, `complete` to "
    "continue raw text, `embed` for embedding vectors of texts, `list_models` and `health` to "
    "inspect the server. `create_response` answers like OpenAI's Responses API and keeps the "
    "conversation on the server: continue it by passing the returned id as "
    "previous_response_id; `get_response` and `delete_response` fetch and delete stored "
    "responses. Resources: models://list, models://{model_id}, server://health, "
    "responses://{response_id}."
)

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
GENERATES = ToolAnnotations(read_only_hint=True, open_world_hint=False)
STORES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DELETES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                          open_world_hint=False)


@dataclass
class AppContext:
    """What every MCP request can reach (through the typed lifespan)."""

    models: ModelRegistry


def build_server(models: ModelRegistry, responses_store: ResponseStore | None = None,
                 mcp_host: McpToolHost | None = None) -> MCPServer[AppContext]:
    """An MCPServer exposing the served ``models``; later features add rows to the tables below.

    ``responses_store`` keeps the responses of ``create_response`` (default: in memory; pass
    the HTTP API's store to share stored responses between the two front ends); ``mcp_host``
    reaches the MCP servers its ``mcp`` tools name (the HTTP API's client).

    The lifespan starts loading the models once the transport is up (so over stdio nothing is
    loaded, and nothing can print, before the SDK has moved fd 1 off the wire).
    """

    @asynccontextmanager
    async def lifespan(server: MCPServer[AppContext]) -> AsyncIterator[AppContext]:
        models.start()
        yield AppContext(models)

    server = MCPServer("infermcp", version="0.1.0", instructions=INSTRUCTIONS, lifespan=lifespan)
    tools = Tools(models)
    store = responses_store if responses_store is not None else SQLiteResponseStore()
    response_tools = ResponseTools(models, store, mcp_host)
    tool_table: list[tuple[Callable[..., Any], str, ToolAnnotations]] = [
        (tools.chat, "Chat", GENERATES),
        (tools.complete, "Text completion", GENERATES),
        (tools.embed, "Embeddings", READ_ONLY),
        (tools.list_models, "List models", READ_ONLY),
        (tools.health, "Server health", READ_ONLY),
        (response_tools.create_response, "Create a response", STORES),
        (response_tools.get_response, "Get a stored response", READ_ONLY),
        (response_tools.delete_response, "Delete a stored response", DELETES),
    ]
    for fn, title, hints in tool_table:
        server.add_tool(fn, title=title, annotations=hints)
    resources = [*_resources(models), ("responses://{response_id}", response_tools.read_response,
                                       "A stored response object (Responses API) by its id")]
    for uri, fn, description in resources:
        server.resource(uri, mime_type="application/json", description=description)(fn)
    return server


def _resources(registry: ModelRegistry) -> list[tuple[str, Callable[..., Any], str]]:
    """The model resources; a read that arrives while the models load waits for them."""

    async def models() -> str:
        await wait_for_models(registry, "the models are loading")
        try:
            return json.dumps(registry.cards())
        except InferError as exc:  # loading or failed: a read error, not a server crash
            raise ResourceError(exc.message) from exc

    async def model(model_id: str) -> str:
        await wait_for_models(registry, "the models are loading")
        try:
            return json.dumps(registry.card(model_id))
        except ModelNotFoundError as exc:
            raise ResourceNotFoundError(exc.message) from exc
        except InferError as exc:
            raise ResourceError(exc.message) from exc

    def health() -> str:
        return json.dumps(registry.health()[1])

    return [
        ("models://list", models, "Every served model with context length, dtype, capabilities"),
        ("models://{model_id}", model, "One served model ('default', its id or an alias; "
                                       "'/' may be written as '--')"),
        ("server://health", health, "Whether the server is ready, loading or failed"),
    ]
