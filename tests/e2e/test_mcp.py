"""The MCP front end through the SDK client, against the real default model.

Listing, reading and short calls run over Streamable HTTP, legacy SSE and stdio, each in both
protocol eras (``mode="legacy"``: the initialize handshake; ``"auto"``: 2026-07-28 discover).
Progress and cancellation run over Streamable HTTP and stdio.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import pytest
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent, TextResourceContents

from tests.e2e.conftest import MAX_SEQ_LEN, READY_TIMEOUT_S, Server

MODES = ["legacy", "auto"]
HI = [{"role": "user", "content": "Say hello."}]
STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
STDIO_ARGS = ["-m", "infermcp", "mcp", "--seed", "0", "--max-seq-len", str(MAX_SEQ_LEN)]
# A bad call, and a part of the message both the tool error and the HTTP API's error carry.
BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("chat", {"messages": HI, "temperature": 5}, "Input should be less than or equal to 2"),
    ("chat", {"messages": HI, "model": "nope"}, "The model 'nope' does not exist"),
    ("chat", {"messages": []}, "'messages' must contain at least one message"),
    ("chat", {"messages": [{"role": "user", "content": "hi " * 2000}]},
     f"maximum context length is {MAX_SEQ_LEN} tokens"),
    ("complete", {"prompt": "x", "model": "nope"}, "The model 'nope' does not exist"),
    ("complete", {"prompt": ""}, "the prompt is empty"),
]
HTTP_PATHS = {"chat": "/v1/chat/completions", "complete": "/v1/completions"}
EngineStats = Callable[[], Awaitable[dict[str, Any]]]


# --- connecting ------------------------------------------------------------------------------

@asynccontextmanager
async def connect(server: Server, transport: str, mode: str) -> AsyncIterator[Client]:
    """The SDK client on the session server: Streamable HTTP at /mcp or legacy SSE at /sse."""
    target = (f"{server.base_url}/mcp" if transport == "http"
              else sse_client(f"{server.base_url}/sse"))
    async with Client(target, mode=mode, read_timeout_seconds=120) as client:
        yield client


@asynccontextmanager
async def connect_stdio(mode: str, errlog_path: Path) -> AsyncIterator[Client]:
    """``infermcp mcp`` as a subprocess, once its model has loaded."""
    params = StdioServerParameters(command=sys.executable, args=STDIO_ARGS,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    with errlog_path.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode,
                          read_timeout_seconds=120) as client:
            await wait_until_loaded(client)
            yield client


async def wait_until_loaded(client: Client) -> None:
    """The stdio server answers before its model loads: poll `health` (bounded)."""
    with anyio.fail_after(READY_TIMEOUT_S):
        while True:
            health = await client.call_tool("health", {})
            assert isinstance(health, CallToolResult) and health.structured_content is not None
            status = health.structured_content["status"]
            if status == "ok":
                return
            assert status == "loading", health.structured_content
            await anyio.sleep(0.5)


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


async def call(client: Client, tool: str, args: dict[str, Any], **kwargs: Any) -> CallToolResult:
    result = await client.call_tool(tool, args, **kwargs)
    assert isinstance(result, CallToolResult)
    return result


async def read_json(client: Client, uri: str) -> Any:
    (content,) = (await client.read_resource(uri)).contents
    assert isinstance(content, TextResourceContents) and content.mime_type == "application/json"
    return json.loads(content.text)


# --- the checks every transport runs --------------------------------------------------------

async def check_tools(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= {"chat", "complete", "list_models", "health"}
    for tool in tools.values():
        assert tool.description and tool.description.strip()
        assert tool.output_schema and tool.output_schema.get("properties")
    assert tools["chat"].input_schema["required"] == ["messages"]
    assert {"max_tokens", "temperature", "model"} <= set(tools["chat"].input_schema["properties"])


async def check_resource_lists(client: Client) -> None:
    resources = (await client.list_resources()).resources
    templates = (await client.list_resource_templates()).resource_templates
    assert {str(r.uri) for r in resources} >= {"models://list", "server://health"}
    assert "models://{model_id}" in {t.uri_template for t in templates}


async def check_generation(client: Client, tool: str, args: dict[str, Any],
                           model_id: str) -> CallToolResult:
    """A greedy call that must hit max_tokens (length) and report usage and choices."""
    result = await call(client, tool, {**args, "temperature": 0})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data is not None
    assert data["text"] == text_of(result) != ""
    assert data["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == args["max_tokens"]
    assert data["usage"]["prompt_tokens"] > 0
    assert 0 <= data["usage"]["prompt_tokens_details"]["cached_tokens"] < \
        data["usage"]["prompt_tokens"]
    assert data["usage"]["total_tokens"] == (data["usage"]["prompt_tokens"]
                                             + data["usage"]["completion_tokens"])
    assert data["model"] == model_id
    assert data["choices"] == [{"index": 0, "text": data["text"], "finish_reason": "length"}]
    return result


async def check_chat(client: Client, model_id: str) -> None:
    await check_generation(client, "chat", {"messages": HI, "max_tokens": 6}, model_id)


async def check_complete(client: Client, model_id: str) -> None:
    result = await check_generation(
        client, "complete", {"prompt": "The capital of France is", "max_tokens": 4}, model_id)
    assert "Paris" in text_of(result)


async def check_resources(client: Client, model_id: str) -> None:
    cards = await read_json(client, "models://list")
    assert [c["kind"] for c in cards] == ["chat", "embedding"]
    listed = cards[0]
    assert listed["id"] == model_id and listed["max_model_len"] == MAX_SEQ_LEN
    assert {"chat", "completion"} <= set(listed["capabilities"])
    assert await read_json(client, "models://default") == listed
    assert await read_json(client, f"models://{model_id.replace('/', '--')}") == listed
    health = await read_json(client, "server://health")
    assert health["status"] == "ok" and health["model"] == model_id


async def check_bad_calls(client: Client) -> None:
    for tool, args, message in BAD_CALLS:
        result = await call(client, tool, args)
        assert result.is_error and message in text_of(result), (tool, args, text_of(result))


async def check_progress(client: Client) -> None:
    """Progress: tokens so far out of max_tokens, with each text delta as the message."""
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await call(client, "chat", {"messages": HI, "max_tokens": 8, "temperature": 0},
                        progress_callback=on_progress)
    progress = [p for p, _, _ in seen]
    assert len(progress) > 1 and progress == sorted(set(progress)) and progress[-1] == 8
    assert {total for _, total, _ in seen} == {8}
    assert "".join(message or "" for _, _, message in seen) == text_of(result)


async def wait_idle(engine_stats: EngineStats) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            stats = await engine_stats()
            if stats["running"] == 0 and stats["waiting"] == 0:
                return stats
            await anyio.sleep(0.05)


async def check_cancel(client: Client, engine_stats: EngineStats, model_id: str) -> None:
    """Cancelling the awaiting task sends notifications/cancelled (or, 2026-era HTTP, closes
    the request's stream); the engine aborts the sequence and frees its cache."""
    before = await wait_idle(engine_stats)
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if progress >= 3:
            started.set()

    task = asyncio.ensure_future(client.call_tool(
        "chat", {"messages": STORY, "max_tokens": 500, "temperature": 0},
        progress_callback=on_progress))
    with anyio.fail_after(120):
        await started.wait()
    assert (await engine_stats())["running"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await wait_idle(engine_stats)
    assert after["aborted"] == before["aborted"] + 1
    assert after["finished"] == before["finished"]
    assert after["free_blocks"] == after["total_blocks"]
    await check_chat(client, model_id)  # the same session still works


def http_engine_stats(server: Server) -> EngineStats:
    async def stats() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            return dict((await http.get(f"{server.base_url}/health", timeout=10)).json()["engine"])
    return stats


def tool_engine_stats(client: Client) -> EngineStats:
    async def stats() -> dict[str, Any]:
        health = await call(client, "health", {})
        assert health.structured_content is not None
        return dict(health.structured_content["engine"])
    return stats


# --- Streamable HTTP and legacy SSE on the session server ------------------------------------

both_modes = pytest.mark.parametrize("mode", MODES)
over_http_and_sse = pytest.mark.parametrize("transport", ["http", "sse"])


@both_modes
@over_http_and_sse
async def test_lists_tools_and_resources(server: Server, transport: str, mode: str) -> None:
    async with connect(server, transport, mode) as client:
        assert client.server_info is not None and client.server_info.name == "infermcp"
        await check_tools(client)
        await check_resource_lists(client)


@both_modes
@over_http_and_sse
async def test_chat_and_complete(server: Server, transport: str, mode: str) -> None:
    async with connect(server, transport, mode) as client:
        await check_chat(client, server.model_id)
        await check_complete(client, server.model_id)


@both_modes
@over_http_and_sse
async def test_reads_resources(server: Server, transport: str, mode: str) -> None:
    async with connect(server, transport, mode) as client:
        await check_resources(client, server.model_id)


@both_modes
@over_http_and_sse
async def test_bad_arguments_are_tool_errors(server: Server, transport: str, mode: str) -> None:
    async with connect(server, transport, mode) as client:
        await check_bad_calls(client)
        await check_chat(client, server.model_id)  # errors leave the session usable


@both_modes
async def test_progress(server: Server, mode: str) -> None:
    async with connect(server, "http", mode) as client:
        await check_progress(client)


@both_modes
async def test_cancel_aborts_the_sequence(server: Server, mode: str) -> None:
    async with connect(server, "http", mode) as client:
        await check_cancel(client, http_engine_stats(server), server.model_id)


@pytest.mark.parametrize(("tool", "args", "message"), BAD_CALLS)
def test_http_api_gives_the_same_messages(server: Server, tool: str, args: dict[str, Any],
                                          message: str) -> None:
    r = httpx.post(f"{server.base_url}{HTTP_PATHS[tool]}", json=args, timeout=60)
    assert r.status_code in (400, 404)
    assert message in r.json()["error"]["message"]


# --- stdio -----------------------------------------------------------------------------------

@both_modes
async def test_stdio_session(server: Server, mode: str, tmp_path: Path) -> None:
    """Everything above over one stdio session (`server` has filled the model cache)."""
    async with connect_stdio(mode, tmp_path / "stderr.log") as client:
        await check_tools(client)
        await check_resource_lists(client)
        await check_chat(client, server.model_id)
        await check_complete(client, server.model_id)
        await check_resources(client, server.model_id)
        await check_bad_calls(client)
        if mode == "legacy":  # the generation-heavy checks once: Claude Desktop's handshake
            await check_progress(client)
            await check_cancel(client, tool_engine_stats(client), server.model_id)


@both_modes
async def test_a_call_right_after_connecting_waits_for_the_model(server: Server, mode: str,
                                                                  tmp_path: Path) -> None:
    """As Claude Desktop does: list models and chat at once, while the model still loads; both
    wait for it (the chat reporting progress that says so) and answer."""
    params = StdioServerParameters(command=sys.executable, args=STDIO_ARGS,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode,
                          read_timeout_seconds=READY_TIMEOUT_S) as client:
            started = await call(client, "health", {})
            assert started.structured_content is not None
            was_loading = started.structured_content["status"] == "loading"
            result = await call(client, "chat", {"messages": HI, "max_tokens": 4},
                                progress_callback=on_progress)
            assert not result.is_error, text_of(result)
            assert result.structured_content is not None and result.structured_content["text"]
            cards = await read_json(client, "models://list")
            assert [c["id"] for c in cards][:1] == [server.model_id]
    if was_loading:
        assert any("is still loading" in m for m in messages), messages


class JsonLines:
    """Requests to a stdio server; its stdout is read line by line in a thread (None: EOF)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin, self._lines = proc.stdin, queue.Queue[bytes | None]()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, message: dict[str, Any]) -> None:
        self._stdin.write(json.dumps(message).encode() + b"\n")
        self._stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return its response (notifications before it are skipped)."""
        id_ = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        while True:
            line = self._lines.get(timeout=120)
            assert line is not None, "the server closed stdout"
            message = json.loads(line)  # a stray print would fail here
            assert message["jsonrpc"] == "2.0"
            if message.get("id") == id_:
                return dict(message)

    def health(self) -> str:
        health = self.request("tools/call", {"name": "health", "arguments": {}})
        return str(health["result"]["structuredContent"]["status"])

    def close(self) -> None:
        self._stdin.close()

    def rest(self) -> list[bytes]:
        """Whatever stdout carries after stdin closed, up to EOF."""
        lines = []
        while (line := self._lines.get(timeout=30)) is not None:
            lines.append(line)
        return lines


def test_stdio_stdout_carries_only_json_rpc_while_loading_noisily(server: Server,
                                                                   tmp_path: Path) -> None:
    """A raw session opened while the model loads, with debug logging and transformers at
    debug verbosity: the logs land on stderr and every stdout line is a JSON-RPC message."""
    stderr_path = tmp_path / "stderr.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "debug"}
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, *STDIO_ARGS, "--log-level", "debug"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                env=env)
    wire = JsonLines(proc)
    try:
        init = wire.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                              "clientInfo": {"name": "raw", "version": "0"}})
        assert init["result"]["serverInfo"]["name"] == "infermcp"
        wire.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = wire.request("tools/list", {})["result"]["tools"]
        assert {"chat", "health"} <= {t["name"] for t in tools}
        assert wire.health() == "loading"
        # a call made while it loads waits for the model (its progress lines are JSON-RPC too)
        chat = wire.request("tools/call", {"name": "chat", "arguments": {
            "messages": HI, "max_tokens": 4, "temperature": 0}, "_meta": {"progressToken": 1}})
        assert not chat["result"]["isError"], chat
        assert chat["result"]["structuredContent"]["usage"]["completion_tokens"] == 4
        assert wire.health() == "ok"
        wire.close()
        rest = wire.rest()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rest == []
    stderr_text = stderr_path.read_text()
    assert "infermcp: serving" in stderr_text and " DEBUG " in stderr_text
    assert len(stderr_text.splitlines()) > 20  # the noise was there, and went to stderr
