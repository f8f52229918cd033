"""The Responses API tools and the responses://{response_id} resource over a fake model."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent, TextResourceContents

from core.responses.store import SQLiteResponseStore
from mcp_server import build_server
from tests.http_api.fakes import FakeEngine, FakeModel
from tests.mcp_server.conftest import connect_fake, is_loaded, registry_of


async def call(client: Client, tool: str, args: dict[str, Any]) -> CallToolResult:
    result = await client.call_tool(tool, args)
    assert isinstance(result, CallToolResult)
    return result


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


async def test_create_continue_get_read_delete(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        first = await call(client, "create_response", {"input": "hi", "instructions": "SYS"})
        assert not first.is_error and text_of(first) == "Hello there!"
        made = first.structured_content
        assert made is not None and made["id"].startswith("resp_")
        assert (made["object"], made["status"], made["output_text"]) == (
            "response", "completed", "Hello there!")
        assert made["usage"]["input_tokens"] == len("SYShi")

        second = await call(client, "create_response", {
            "input": "more", "previous_response_id": made["id"]})
        assert second.structured_content is not None
        assert second.structured_content["usage"]["input_tokens"] == len("hiHello there!more")

        fetched = await call(client, "get_response", {"response_id": made["id"]})
        assert fetched.structured_content == made
        (content,) = (await client.read_resource(f"responses://{made['id']}")).contents
        assert isinstance(content, TextResourceContents)
        assert content.mime_type == "application/json"
        assert json.loads(content.text) == {k: v for k, v in made.items() if k != "output_text"}

        deleted = await call(client, "delete_response", {"response_id": made["id"]})
        assert deleted.structured_content == {"id": made["id"], "object": "response",
                                              "deleted": True}
        for tool in ("get_response", "delete_response"):
            gone = await call(client, tool, {"response_id": made["id"]})
            assert gone.is_error and f"Response with id '{made['id']}' not found" in text_of(gone)
        with pytest.raises(MCPError, match="not found"):
            await client.read_resource(f"responses://{made['id']}")


async def test_unknown_previous_response_and_media_are_tool_errors(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        unknown = await call(client, "create_response", {"input": "x",
                                                         "previous_response_id": "resp_nope"})
        media = await call(client, "create_response", {"input": [
            {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]})
    assert unknown.is_error and "Previous response with id 'resp_nope' not found" in \
        text_of(unknown)
    assert media.is_error and "modalities: text" in text_of(media)


async def test_store_false_is_not_kept(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        made = await call(client, "create_response", {"input": "hi", "store": False})
        assert made.structured_content is not None and made.structured_content["store"] is False
        fetched = await call(client, "get_response", {"response_id": made.structured_content["id"]})
    assert fetched.is_error


async def test_function_call_text_is_the_calls_as_json(mode: str) -> None:
    words = ("<tool_call>", '{"name": "f", "arguments": {"x": 1}}', "</tool_call>")
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    async with connect_fake(FakeEngine(words=words), mode) as client:
        result = await call(client, "create_response", {"input": "go", "tools": [tool],
                                                        "tool_choice": "required"})
    (item,) = json.loads(text_of(result))
    assert item["name"] == "f" and json.loads(item["arguments"]) == {"x": 1}
    assert item["call_id"].startswith("call_")


async def test_the_store_passed_in_is_used() -> None:
    store = SQLiteResponseStore()
    registry = registry_of(lambda: FakeModel(engine=FakeEngine()))
    async with Client(build_server(registry, store), mode="legacy") as client:
        with anyio.fail_after(5):
            while not is_loaded(registry):
                await anyio.sleep(0.005)
        made = await call(client, "create_response", {"input": "hi"})
    assert made.structured_content is not None
    record = store.get(made.structured_content["id"])
    assert record is not None and record.history == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there!"}]
