"""MCP over HTTP refuses what it must: rebinding Hosts and Origins, and missing or bad tokens.

A second real server runs for this module with ``--api-key`` and MCP on its own ``--mcp-port``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import Server, free_port, launch_process, wait_ready

KEY = "secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "pytest", "version": "0"}}}


@dataclass(frozen=True)
class SecureServer:
    base_url: str  # the OpenAI API
    mcp_url: str  # the MCP listener's root (/mcp, /sse)
    mcp_port: int


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    port, mcp_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("secure") / "server.log"
    args = ["serve", "--port", str(port), "--mcp-port", str(mcp_port), "--api-key", KEY,
            "--allowed-hosts", "mcp.example", "--allowed-origins", "https://app.example",
            "--max-seq-len", "256", "--max-seqs", "2"]
    with launch_process(args, log_path) as proc:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, proc, log_path)
        yield SecureServer(base_url, f"http://127.0.0.1:{mcp_port}", mcp_port)


def initialize(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/mcp", json=INITIALIZE, headers={**MCP_ACCEPT, **headers},
                      timeout=30)


def sse_result(r: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a one-event Streamable HTTP response."""
    assert r.headers["content-type"].startswith("text/event-stream"), r.text
    (data,) = [line[5:] for line in r.text.splitlines() if line.startswith("data:")]
    return dict(json.loads(data))


def test_right_token_initializes(secure: SecureServer) -> None:
    r = initialize(secure.mcp_url, AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["mcp-session-id"]
    assert sse_result(r)["result"]["serverInfo"]["name"] == "infermcp"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY}])
def test_missing_or_bad_token_is_401(secure: SecureServer, headers: dict[str, str]) -> None:
    r = initialize(secure.mcp_url, headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_sse_needs_the_token_too(secure: SecureServer) -> None:
    with httpx.stream("GET", f"{secure.mcp_url}/sse", timeout=30) as r:
        assert r.status_code == 401
    r = httpx.post(f"{secure.mcp_url}/messages/?session_id=00", json=INITIALIZE, timeout=30)
    assert r.status_code == 401


def test_hostile_origin_is_403(secure: SecureServer) -> None:
    r = initialize(secure.mcp_url, {**AUTH, "Origin": "http://evil.example"})
    assert r.status_code == 403
    with httpx.stream("GET", f"{secure.mcp_url}/sse", timeout=30,
                      headers={**AUTH, "Origin": "http://evil.example"}) as r:
        assert r.status_code == 403


def test_hostile_host_is_421(secure: SecureServer) -> None:
    r = initialize(secure.mcp_url, {**AUTH, "Host": "evil.example"})
    assert r.status_code == 421
    with httpx.stream("GET", f"{secure.mcp_url}/sse", timeout=30,
                      headers={**AUTH, "Host": "evil.example"}) as r:
        assert r.status_code == 421


@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost:3000"}, {"Origin": "https://app.example"},
    {"Host": "mcp.example"}, {"Host": "localhost"}])
def test_local_and_allowed_hosts_and_origins_pass(secure: SecureServer,
                                                  headers: dict[str, str]) -> None:
    r = initialize(secure.mcp_url, {**AUTH, **headers})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("headers", "status"), [({"Origin": "http://evil.example"}, 403),
                                                 ({"Host": "evil.example"}, 421)])
def test_rebinding_protection_without_an_api_key(server: Server, headers: dict[str, str],
                                                 status: int) -> None:
    """The session server has no key: Host/Origin validation still guards its /mcp."""
    assert initialize(server.base_url, headers).status_code == status
    assert initialize(server.base_url, {}).status_code == 200


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_sdk_client_with_the_token(secure: SecureServer, transport: str, mode: str
                                         ) -> None:
    async with httpx2.AsyncClient(headers=AUTH, timeout=60) as http:
        target = (streamable_http_client(f"{secure.mcp_url}/mcp", http_client=http)
                  if transport == "http" else sse_client(f"{secure.mcp_url}/sse", headers=AUTH))
        async with Client(target, mode=mode) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            models = await client.call_tool("list_models", {})
    assert "chat" in tools
    assert not models.is_error


def test_openai_api_needs_the_token_but_health_does_not(secure: SecureServer) -> None:
    assert httpx.get(f"{secure.base_url}/v1/models", timeout=30).status_code == 401
    models = httpx.get(f"{secure.base_url}/v1/models", headers=AUTH, timeout=30)
    assert models.status_code == 200 and models.json()["data"]
    assert httpx.get(f"{secure.base_url}/health", timeout=30).status_code == 200


def test_mcp_port_moves_mcp_off_the_main_port(secure: SecureServer) -> None:
    assert initialize(secure.base_url, AUTH).status_code == 404
    assert httpx.get(f"{secure.mcp_url}/v1/models", headers=AUTH, timeout=30).status_code == 404
