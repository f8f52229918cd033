"""The API-key matrix over HTTP and MCP on one port, CORS before the key check, and --log.

A second real server runs for this module with ``--api-key``, ``--cors-origins`` and ``--log``;
the session server (no key) is the other half of the matrix. Open without a key: /health, the
docs, /openapi.json and /metrics; everything else (/v1/*, /tokenize, /detokenize, /re_isq,
/mcp, /sse) needs it when one is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import Server, free_port, launch_process, log_lines, wait_ready

KEY = "matrix-key"
APP_ORIGIN = "http://app.example"
HI = [{"role": "user", "content": "hi"}]
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "pytest", "version": "0"}}}


@dataclass(frozen=True)
class Keyed:
    base_url: str
    log_file: Path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    folder = tmp_path_factory.mktemp("keyed")
    port, log_file = free_port(), folder / "access.log"
    args = ["serve", "--port", str(port), "--api-key", KEY, "--cors-origins", APP_ORIGIN,
            "--log", str(log_file), "--max-seq-len", "256", "--max-seqs", "2"]
    with launch_process(args, folder / "server.log") as proc:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, proc, folder / "server.log")
        yield Keyed(base_url, log_file)


# (method, path, JSON body, extra headers, the statuses a request that passes auth may get)
OPEN_ROUTES: list[tuple[str, str, Any, dict[str, str], set[int]]] = [
    ("GET", "/health", None, {}, {200}),
    ("GET", "/docs", None, {}, {200}),
    ("GET", "/docs/static/swagger-ui.css", None, {}, {200}),
    ("GET", "/openapi.json", None, {}, {200}),
    ("GET", "/api-doc/openapi.json", None, {}, {200}),
    ("GET", "/metrics", None, {}, {200}),
]
PROTECTED_ROUTES: list[tuple[str, str, Any, dict[str, str], set[int]]] = [
    ("GET", "/v1/models", None, {}, {200}),
    ("POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 1}, {}, {200}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1}, {}, {200}),
    ("POST", "/v1/embeddings", {"input": "hi"}, {}, {200}),
    ("POST", "/tokenize", {"prompt": "hi"}, {}, {200}),
    ("POST", "/detokenize", {"tokens": [1]}, {}, {200}),
    # never a real type: a passing request must not re-quantize the shared server
    ("POST", "/re_isq", {"ggml_type": "no-such-type"}, {}, {400, 404}),
    ("POST", "/mcp", INITIALIZE, MCP_ACCEPT, {200}),
    ("GET", "/sse", None, {}, {200}),
    ("POST", "/messages/?session_id=00", INITIALIZE, {}, {400, 404}),
]
TOKENS = {"none": {}, "wrong": {"Authorization": "Bearer nope"},
          "bare": {"Authorization": KEY}, "right": {"Authorization": f"Bearer {KEY}"}}


def call(base_url: str, method: str, path: str, body: Any, headers: dict[str, str]) -> int:
    """The status of one request (a stream is closed as soon as its headers arrive)."""
    with httpx.stream(method, f"{base_url}{path}", json=body, headers=headers,
                      timeout=120) as r:
        return r.status_code


def route_id(route: tuple[Any, ...]) -> str:
    return f"{route[0]} {route[1]}"


@pytest.mark.parametrize("token", list(TOKENS))
@pytest.mark.parametrize("route", PROTECTED_ROUTES, ids=route_id)
def test_protected_routes_need_the_key(keyed: Keyed, route: tuple[Any, ...],
                                       token: str) -> None:
    method, path, body, headers, ok = route
    status = call(keyed.base_url, method, path, body, {**headers, **TOKENS[token]})
    assert status in ok if token == "right" else status == 401


@pytest.mark.parametrize("token", list(TOKENS))
@pytest.mark.parametrize("route", OPEN_ROUTES, ids=route_id)
def test_open_routes_need_no_key(keyed: Keyed, route: tuple[Any, ...], token: str) -> None:
    method, path, body, headers, ok = route
    assert call(keyed.base_url, method, path, body, {**headers, **TOKENS[token]}) in ok


@pytest.mark.parametrize("token", ["none", "wrong"])
@pytest.mark.parametrize("route", PROTECTED_ROUTES + OPEN_ROUTES, ids=route_id)
def test_without_a_key_nothing_is_locked(server: Server, route: tuple[Any, ...],
                                         token: str) -> None:
    method, path, body, headers, ok = route
    assert call(server.base_url, method, path, body, {**headers, **TOKENS[token]}) in ok


def test_401_is_the_openai_envelope(keyed: Keyed) -> None:
    r = httpx.post(f"{keyed.base_url}/v1/chat/completions", json={"messages": HI}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["type"] == "authentication_error"


async def test_mcp_sdk_client_with_and_without_the_key(keyed: Keyed) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"},
                                  timeout=60) as http:
        target = streamable_http_client(f"{keyed.base_url}/mcp", http_client=http)
        async with Client(target, mode="legacy") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
    assert {"chat", "complete", "embed"} <= tools
    with pytest.raises(Exception):  # noqa: B017 (the SDK wraps the 401 its own way)
        async with Client(f"{keyed.base_url}/mcp", mode="legacy") as client:
            await client.list_tools()


def test_cors_preflight_passes_before_the_key_check(keyed: Keyed) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = httpx.options(f"{keyed.base_url}/v1/chat/completions", timeout=30,
                      headers={"Origin": APP_ORIGIN, **preflight})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    r = httpx.options(f"{keyed.base_url}/v1/chat/completions", timeout=30,
                      headers={"Origin": "http://evil.example", **preflight})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{keyed.base_url}/v1/models", headers={"Origin": APP_ORIGIN, **auth},
                  timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    # MCP admits the CORS origins too (and still refuses others)
    mcp = {**MCP_ACCEPT, **auth}
    ok = httpx.post(f"{keyed.base_url}/mcp", json=INITIALIZE, timeout=30,
                    headers={**mcp, "Origin": APP_ORIGIN})
    assert ok.status_code == 200
    evil = httpx.post(f"{keyed.base_url}/mcp", json=INITIALIZE, timeout=30,
                      headers={**mcp, "Origin": "http://evil.example"})
    assert evil.status_code == 403


def test_log_file_has_the_access_log(keyed: Keyed) -> None:
    r = httpx.get(f"{keyed.base_url}/v1/models", headers={"x-request-id": "log-check-1"},
                  timeout=30)
    assert r.status_code == 401 and r.headers["x-request-id"] == "log-check-1"
    r = httpx.post(f"{keyed.base_url}/tokenize", json={"prompt": "hello there"}, timeout=30,
                   headers={"x-request-id": "log-check-2", "Authorization": f"Bearer {KEY}"})
    count = r.json()["count"]
    lines = log_lines(keyed.log_file, "request_id=log-check-2")
    assert any("infermcp.access" in line and "request_id=log-check-1" in line
               and "path=/v1/models status=401" in line for line in lines)
    assert any("request_id=log-check-2" in line and f"prompt_tokens={count}" in line
               for line in lines)
