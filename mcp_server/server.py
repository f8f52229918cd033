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

from core.errors import InferError
from core.serving import ModelSlot, ServedModel
from mcp_server.tools import Tools

INSTRUCTIONS = (
    "infermcp serves a local language model. Use `chat` for a reply to a conversation, "
    "`complete` to continue raw text, `list_models` and `health` to inspect the server. "
    "Resources: models://list, models://{model_id}, server://health."
)

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
GENERATES = ToolAnnotations(read_only_hint=True, open_world_hint=False)


@dataclass
class AppContext:
    """What every MCP request can reach (through the typed lifespan)."""

    slot: ModelSlot


def build_server(slot: ModelSlot) -> MCPServer[AppContext]:
    """An MCPServer exposing ``slot``'s model; later features add rows to the tables below.

    The lifespan starts loading the model once the transport is up (so over stdio nothing is
    loaded, and nothing can print, before the SDK has moved fd 1 off the wire).
    """

    @asynccontextmanager
    async def lifespan(server: MCPServer[AppContext]) -> AsyncIterator[AppContext]:
        slot.start()
        yield AppContext(slot)

    server = MCPServer("infermcp", version="0.1.0", instructions=INSTRUCTIONS, lifespan=lifespan)
    tools = Tools(slot)
    tool_table: list[tuple[Callable[..., Any], str, ToolAnnotations]] = [
        (tools.chat, "Chat", GENERATES),
        (tools.complete, "Text completion", GENERATES),
        (tools.list_models, "List models", READ_ONLY),
        (tools.health, "Server health", READ_ONLY),
    ]
    for fn, title, hints in tool_table:
        server.add_tool(fn, title=title, annotations=hints)
    for uri, fn, description in _resources(slot):
        server.resource(uri, mime_type="application/json", description=description)(fn)
    return server


def _resources(slot: ModelSlot) -> list[tuple[str, Callable[..., Any], str]]:
    def require() -> ServedModel:
        try:
            return slot.require()
        except InferError as exc:  # loading or failed: a read error, not a server crash
            raise ResourceError(exc.message) from exc

    def models() -> str:
        return json.dumps([require().card()])

    def model(model_id: str) -> str:
        served = require()
        if model_id not in ("default", served.id, served.id.replace("/", "--")):
            raise ResourceNotFoundError(f"no model {model_id!r}; available: {served.id!r}")
        return json.dumps(served.card())

    def health() -> str:
        return json.dumps(slot.health()[1])

    return [
        ("models://list", models, "Every served model with context length, dtype, capabilities"),
        ("models://{model_id}", model, "One served model ('default', its id, or the id with "
                                       "'/' written as '--')"),
        ("server://health", health, "Whether the server is ready, loading or failed"),
    ]
