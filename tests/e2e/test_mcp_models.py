"""The MCP `embed` and `list_models` tools and the model resources, through the SDK client
over Streamable HTTP, route models exactly as the HTTP API does."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from mcp import Client

from tests.e2e.conftest import Server

TEXTS = ["How do I reset my password?", "The giraffe is the tallest land animal."]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_embed_tool_equals_the_http_api(server: Server, mode: str) -> None:
    http = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": TEXTS}).json()
    async with Client(f"{server.base_url}/mcp", mode=mode) as client:  # type: ignore[arg-type]
        assert "embed" in {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("embed", {"input": TEXTS})
    assert not result.is_error
    structured = result.structured_content
    assert structured is not None
    assert structured["model"] == server.embedding_model_id and structured["dimensions"] == 384
    assert structured["usage"] == http["usage"]
    ours = np.array(structured["embeddings"])
    assert np.abs(ours - np.array([d["embedding"] for d in http["data"]])).max() < 1e-6
    text = result.content[0].text  # type: ignore[union-attr]
    assert np.allclose(json.loads(text), ours)


async def test_model_routing_errors_are_tool_errors(server: Server) -> None:
    async with Client(f"{server.base_url}/mcp") as client:
        wrong_kind = await client.call_tool("embed", {"input": "hi", "model": server.model_id})
        unknown = await client.call_tool("chat", {"messages": [{"role": "user", "content": "x"}],
                                                  "model": "nope", "max_tokens": 1})
        chat_on_encoder = await client.call_tool("chat", {
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
            "model": server.embedding_model_id})
        empty = await client.call_tool("embed", {"input": []})
    for result in (wrong_kind, unknown, chat_on_encoder, empty):
        assert result.is_error
    assert server.embedding_model_id in wrong_kind.content[0].text  # type: ignore[union-attr]
    assert "does not exist" in unknown.content[0].text  # type: ignore[union-attr]
    assert server.model_id in chat_on_encoder.content[0].text  # type: ignore[union-attr]


async def test_list_models_and_resources_report_every_model(server: Server) -> None:
    async with Client(f"{server.base_url}/mcp") as client:
        listed = await client.call_tool("list_models", {})
        resource = await client.read_resource("models://list")
        one = await client.read_resource("models://sentence-transformers--all-MiniLM-L6-v2")
        health = await client.call_tool("health", {})
    assert listed.structured_content is not None
    kinds = {m["id"]: m["kind"] for m in listed.structured_content["models"]}
    assert kinds == {server.model_id: "chat", server.embedding_model_id: "embedding"}
    cards = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
    assert {c["id"] for c in cards} == set(kinds)
    card = json.loads(one.contents[0].text)  # type: ignore[union-attr]
    assert card["kind"] == "embedding" and card["max_model_len"] == 256
    assert health.structured_content is not None
    assert set(health.structured_content["models"]) == set(kinds)
