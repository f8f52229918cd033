"""The MCP resources and server metadata over a fake model."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from mcp.types import TextResourceContents

from core.serving.registry import ModelRegistry
from tests.http_api.fakes import FakeEngine
from tests.mcp_server.conftest import Gate, connect_fake, connect_slot, is_loaded, registry_of

CARD = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "infermcp",
        "root": "fake-model", "max_model_len": 64, "dtype": "float32", "kind": "chat",
        "capabilities": ["chat", "completion"]}


async def read_json(client: Client, uri: str) -> Any:
    result = await client.read_resource(uri)
    (content,) = result.contents
    assert isinstance(content, TextResourceContents)
    assert content.mime_type == "application/json" and str(content.uri) == uri
    return json.loads(content.text)


async def test_resource_lists(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        resources = (await client.list_resources()).resources
        templates = (await client.list_resource_templates()).resource_templates
    assert sorted(str(r.uri) for r in resources) == ["models://list", "server://health"]
    assert [t.uri_template for t in templates] == ["models://{model_id}",
                                                   "responses://{response_id}"]
    assert all(r.description for r in resources) and templates[0].description


async def test_server_identity(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        assert client.server_info is not None and client.server_info.name == "infermcp"
        assert client.server_capabilities.tools is not None
        assert client.server_capabilities.resources is not None


@pytest.mark.parametrize("uri", ["models://default", "models://fake-model"])
async def test_model_resource(mode: str, uri: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        assert await read_json(client, "models://list") == [CARD]
        assert await read_json(client, uri) == CARD


async def test_model_ids_with_a_slash_are_written_with_dashes(mode: str) -> None:
    slot = registry_of(lambda: _named("org/model"), print, "org/model")
    async with connect_slot(slot, mode) as client:
        await _loaded(slot)
        assert (await read_json(client, "models://org--model"))["id"] == "org/model"


async def test_unknown_model_resource_is_invalid_params(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        with pytest.raises(MCPError) as info:
            await client.read_resource("models://nope")
    assert info.value.error.code == -32602
    assert "The model 'nope' does not exist" in info.value.error.message


async def test_health_resource(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        health = await read_json(client, "server://health")
    assert health["status"] == "ok" and health["engine"]["running"] == 0


async def test_resources_read_while_loading_wait_for_the_models(mode: str) -> None:
    gate, opened = Gate(), []

    async def open_later() -> None:
        await anyio.sleep(0.5)
        opened.append(True)
        gate.open()

    try:
        async with connect_slot(registry_of(gate.load, print), mode) as client:  # type: ignore[arg-type]
            assert (await read_json(client, "server://health"))["status"] == "loading"
            async with anyio.create_task_group() as group:
                group.start_soon(open_later)
                with anyio.fail_after(10):
                    listed = await read_json(client, "models://list")
                assert opened  # the read answered only once the model had loaded
            assert listed[0]["id"] == "fake-model"
            assert (await read_json(client, "models://default"))["id"] == "fake-model"
    finally:
        gate.open()


def _named(model_id: str) -> Any:
    from tests.http_api.fakes import FakeModel

    return FakeModel(id=model_id)


async def _loaded(slot: ModelRegistry) -> None:
    import anyio

    with anyio.fail_after(5):
        while not is_loaded(slot):
            await anyio.sleep(0.005)
