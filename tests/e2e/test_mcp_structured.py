"""The MCP `chat` tool takes the same response_format, grammar and tools as the HTTP API."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from mcp.client import Client

from tests.e2e.conftest import Server
from tests.e2e.test_structured import SCHEMAS, WEATHER, json_format

ASK = [{"role": "user", "content": "Describe a fictional person."}]


async def call_chat(server: Server, **arguments: Any) -> Any:
    async with Client(f"{server.base_url}/mcp") as client:
        result = await client.call_tool("chat", {"messages": ASK, "temperature": 0, **arguments})
    assert not result.is_error, result.content
    return result.structured_content


async def test_mcp_chat_response_format(server: Server) -> None:
    out = await call_chat(server, max_tokens=60, response_format=json_format(SCHEMAS[1]))
    jsonschema.validate(json.loads(out["text"]), SCHEMAS[1])


async def test_mcp_chat_grammar(server: Server) -> None:
    out = await call_chat(server, max_tokens=12,
                          grammar={"type": "regex", "value": "(yes|no)[.!]"})
    assert re.fullmatch("(yes|no)[.!]", out["text"])


async def test_mcp_chat_tool_call(server: Server) -> None:
    out = await call_chat(server, max_tokens=60, tools=[WEATHER], tool_choice="required")
    assert out["finish_reason"] == "tool_calls"
    call = out["tool_calls"][0]
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])
