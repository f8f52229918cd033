"""The MCP tools over a fake model: schemas, results, progress, tool errors, loading states."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.types import CallToolResult, TextContent
from PIL import Image

from core.engine.params import LIMITS
from tests.core.engine.edges import edges
from tests.http_api.fakes import FakeEngine
from tests.mcp_server.conftest import Gate, connect_fake, connect_slot, registry_of

HI = [{"role": "user", "content": "hi"}]
RESULT_FIELDS = ["text", "finish_reason", "usage", "model", "choices"]
CHAT_FIELDS = {"messages", "max_tokens", "temperature", "model", "top_p", "top_k", "min_p", "stop",
               "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
               "response_format", "grammar", "tools", "tool_choice", "enable_thinking",
               "truncate_sequence", "n"}


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


async def call(client: Client, tool: str, args: dict[str, Any], **kwargs: Any
               ) -> CallToolResult:
    result = await client.call_tool(tool, args, **kwargs)
    assert isinstance(result, CallToolResult)
    return result


async def test_tool_table(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"chat", "complete", "embed", "list_models", "health",
                          "create_response", "get_response", "delete_response"}
    for name, tool in tools.items():
        assert tool.description and len(tool.description) > 40
        assert tool.title and tool.output_schema is not None
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is (name not in ("create_response",
                                                                "delete_response"))
    for name in ("chat", "complete"):
        assert set(RESULT_FIELDS) <= set(tools[name].output_schema["required"])  # type: ignore[index]
        assert not tools[name].annotations.idempotent_hint  # type: ignore[union-attr]
    chat = tools["chat"].input_schema
    assert set(chat["properties"]) >= CHAT_FIELDS and chat["required"] == ["messages"]
    assert chat["properties"]["messages"]["minItems"] == 1
    temperature = chat["properties"]["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
    assert tools["complete"].input_schema["required"] == ["prompt"]
    assert tools["complete"].input_schema["properties"]["prompt"]["minLength"] == 1


async def test_chat_result(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        result = await call(client, "chat", {"messages": HI, "max_tokens": 10})
    assert not result.is_error
    assert text_of(result) == "Hello there!"
    assert result.structured_content is not None
    assert {k: result.structured_content[k] for k in RESULT_FIELDS} == {
        "text": "Hello there!", "finish_reason": "stop", "model": "fake-model",
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                  "prompt_tokens_details": {"cached_tokens": 0}},
        "choices": [{"index": 0, "text": "Hello there!", "finish_reason": "stop"}]}


async def test_complete_result(mode: str) -> None:
    async with connect_fake(FakeEngine(words=("a", "b")), mode) as client:
        result = await call(client, "complete", {"prompt": "xyz"})
    assert text_of(result) == "ab"
    assert result.structured_content is not None
    assert result.structured_content["usage"] == {"prompt_tokens": 3, "completion_tokens": 2,
                                                  "total_tokens": 5,
                                                  "prompt_tokens_details": {"cached_tokens": 0}}


async def test_n_choices_text_is_a_json_list(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        result = await call(client, "chat", {"messages": HI, "n": 2})
    assert json.loads(text_of(result)) == ["Hello there!", "Hello there!"]
    assert result.structured_content is not None
    assert [c["index"] for c in result.structured_content["choices"]] == [0, 1]
    assert result.structured_content["usage"]["completion_tokens"] == 6
    assert result.structured_content["usage"]["prompt_tokens"] == 2  # the prompt counts once


async def test_progress_reports_tokens_and_deltas(mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect_fake(FakeEngine(), mode) as client:
        await client.call_tool("chat", {"messages": HI, "max_tokens": 10},
                               progress_callback=on_progress)
        await client.call_tool("chat", {"messages": HI}, progress_callback=on_progress)
    assert seen[:3] == [(1, 10, "Hello"), (2, 10, " there"), (3, 10, "!")]
    assert [total for _, total, _ in seen[3:]] == [64, 64, 64]  # no max_tokens: the context


async def test_cancelled_call_aborts_the_engine_request(mode: str) -> None:
    engine = FakeEngine(words=tuple(f"w{i} " for i in range(1000)), delay=0.01)
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with connect_fake(engine, mode) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.call_tool("chat", {"messages": HI},
                                                   progress_callback=on_progress))
            with anyio.fail_after(5):
                await started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            while not engine.aborted:
                await anyio.sleep(0.01)
        assert len(engine.aborted) == 1 and engine.aborted[0].startswith("chatcmpl-")
        health = await call(client, "health", {})  # the session still works
    assert health.structured_content is not None
    assert health.structured_content["engine"]["aborted"] == 1


def looking_at(data: str, mime: str = "image/png") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What?"},
                                         {"type": "image", "data": data, "mimeType": mime}]}]


def png_base64(size: tuple[int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, "green").save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


async def test_chat_reads_mcp_image_content(mode: str) -> None:
    engine = FakeEngine()
    async with connect_fake(engine, mode, input_modalities=("text", "image")) as client:
        schema = {t.name: t for t in (await client.list_tools()).tools}["chat"].input_schema
        result = await call(client, "chat", {"messages": looking_at(png_base64((7, 1)))})
        corrupt = await call(client, "chat", {"messages": looking_at("AAAA")})
        audio = await call(client, "chat", {"messages": [{"role": "user", "content": [
            {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"}]}]})
    content = schema["$defs"]["Message"]["properties"]["content"]["anyOf"]
    assert {"string", "array"} == {c["type"] for c in content}
    assert not result.is_error
    assert "".join(map(chr, engine.requests[-1].prompt_token_ids)) == "What?<image 7x1>"
    assert corrupt.is_error and "messages[0].content[1]: the data is not a PNG" in \
        text_of(corrupt)
    assert audio.is_error and "'audio'" in text_of(audio)


async def test_an_image_for_a_text_model_is_a_tool_error_naming_its_modalities(
        mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        result = await call(client, "chat", {"messages": looking_at(png_base64((2, 2)))})
    assert result.is_error and "messages[0].content[1] is an image_url part, but the model " \
        "'fake-model' reads only text (its input modalities: text)" in text_of(result)


async def test_unknown_model_is_a_tool_error(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        result = await call(client, "chat", {"messages": HI, "model": "nope"})
    assert result.is_error and "The model 'nope' does not exist" in text_of(result)


async def test_bad_arguments_are_tool_errors(mode: str) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("chat", {"messages": []}, "'messages' must contain at least one message"),
        ("chat", {"messages": HI, "temperature": 5}, "less than or equal to 2"),
        ("chat", {"messages": HI, "top_p": 0}, "greater than 0"),
        ("complete", {"prompt": "x", "max_tokens": 0}, "greater than or equal to 1"),
    ]
    async with connect_fake(FakeEngine(), mode) as client:
        for tool, args, message in cases:
            result = await call(client, tool, args)
            assert result.is_error and message in text_of(result), (args, text_of(result))


async def test_limits_are_the_spec(mode: str) -> None:
    """The sampling tools admit each bound of the shared spec and refuse just past it, as the
    HTTP API does (tests/http_api/test_protocol.py), and their schemas say so."""
    async with connect_fake(FakeEngine(), mode) as client:
        tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        for name, inside, past in edges():
            if name not in tools["chat"]["properties"]:
                continue
            admitted = await call(client, "chat", {"messages": HI, name: inside})
            refused = await call(client, "chat", {"messages": HI, name: past})
            assert not admitted.is_error, (name, inside, text_of(admitted))
            assert refused.is_error, (name, past)
    for tool, schema in tools.items():
        for arg, prop in schema["properties"].items():
            limits = LIMITS.get("max_tokens" if arg == "max_output_tokens" else arg)
            if limits is not None:
                bounds = prop["anyOf"][0] if "anyOf" in prop else prop
                assert (bounds.get("minimum"), bounds.get("exclusiveMinimum"),
                        bounds.get("maximum")) == (limits.ge, limits.gt, limits.le), (tool, arg)


async def test_top_k_minus_one_is_off(mode: str) -> None:
    engine = FakeEngine()
    async with connect_fake(engine, mode) as client:
        for tool, args in (("chat", {"messages": HI}), ("complete", {"prompt": "x"}),
                           ("create_response", {"input": "x"})):
            result = await call(client, tool, {**args, "top_k": -1})
            assert not result.is_error, (tool, text_of(result))
    assert [r.params.top_k for r in engine.requests] == [0, 0, 0]


async def test_engine_failure_mid_stream_is_a_tool_error(mode: str) -> None:
    async with connect_fake(FakeEngine(fail_after=1), mode) as client:
        result = await call(client, "chat", {"messages": HI})
    assert result.is_error and "the engine failed: boom" in text_of(result)


async def test_list_models_and_health(mode: str) -> None:
    async with connect_fake(FakeEngine(), mode) as client:
        models = await call(client, "list_models", {})
        health = await call(client, "health", {})
    assert models.structured_content == {"models": [{
        "id": "fake-model", "max_model_len": 64, "dtype": "float32", "kind": "chat",
        "capabilities": ["chat", "completion"], "aliases": [], "dimensions": None,
        "architecture": None}]}  # a fake engine's model has no checkpoint
    assert health.structured_content is not None
    assert health.structured_content["status"] == "ok"
    assert health.structured_content["model"] == "fake-model"
    assert health.structured_content["engine"]["aborted"] == 0


async def test_calls_while_loading_wait_for_the_model(mode: str) -> None:
    """A call that arrives while the model loads waits (progress says why), then answers."""
    gate = Gate()
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")
        if len(messages) == 2:  # two reports while waiting: now let the model load
            gate.open()

    try:
        async with connect_slot(registry_of(gate.load, print), mode) as client:  # type: ignore[arg-type]
            health = await call(client, "health", {})
            with anyio.fail_after(10):
                chat = await call(client, "chat", {"messages": HI},
                                  progress_callback=on_progress)
            models = await call(client, "list_models", {})
    finally:
        gate.open()
    assert not health.is_error and health.structured_content is not None
    assert health.structured_content["status"] == "loading"
    assert messages[:2] == ["the model 'fake-model' is still loading; retry shortly"] * 2
    for result in (chat, models):
        assert not result.is_error, text_of(result)


async def test_the_wait_for_a_loading_model_is_bounded(mode: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_server import tools

    monkeypatch.setattr(tools, "LOAD_WAIT_S", 0.3)
    gate = Gate()
    try:
        async with connect_slot(registry_of(gate.load, print), mode) as client:  # type: ignore[arg-type]
            chat = await call(client, "chat", {"messages": HI})
    finally:
        gate.open()
    assert chat.is_error and "still loading" in text_of(chat)


async def test_calls_after_a_failed_load(mode: str) -> None:
    errors: list[str] = []
    slot = registry_of(Gate(fail="no config.json in /x").load, errors.append)  # type: ignore[arg-type]
    async with connect_slot(slot, mode) as client:
        with anyio.fail_after(5):
            while not errors:
                await anyio.sleep(0.005)
        health = await call(client, "health", {})
        chat = await call(client, "chat", {"messages": HI})
    assert health.structured_content is not None
    assert health.structured_content["status"] == "error"
    assert health.structured_content["error"] == "no config.json in /x"
    assert chat.is_error and "no config.json in /x" in text_of(chat)
