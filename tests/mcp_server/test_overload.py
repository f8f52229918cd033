"""Overload and shutdown reach MCP clients as tool errors with the HTTP API's message."""

from __future__ import annotations

import anyio

from tests.http_api.fakes import FakeEngine, FakeModel
from tests.mcp_server.conftest import connect_fake, connect_slot, is_loaded, registry_of
from tests.mcp_server.test_tools import HI, call, text_of


async def test_a_full_queue_is_a_tool_error(mode: str) -> None:
    async with connect_fake(FakeEngine(overloaded=True), mode) as client:
        result = await call(client, "chat", {"messages": HI})
    assert result.is_error
    assert "at capacity" in text_of(result) and "retry after 2 s" in text_of(result)


async def test_a_draining_server_answers_tools_with_an_error(mode: str) -> None:
    registry = registry_of(FakeModel)
    async with connect_slot(registry, mode) as client:
        with anyio.fail_after(5):
            while not is_loaded(registry):
                await anyio.sleep(0.005)
        assert not (await call(client, "complete", {"prompt": "hi"})).is_error
        registry.drain()  # what the HTTP server does on SIGTERM
        result = await call(client, "complete", {"prompt": "hi"})
    assert result.is_error and "shutting down" in text_of(result)
