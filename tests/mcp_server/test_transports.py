"""The HTTP transports' routes, and the paths the server answers for them before they exist."""

from __future__ import annotations

import contextlib
import threading

import anyio
import httpx
import uvicorn
from mcp.client import Client
from starlette.routing import Match

from core.responses.store import SQLiteResponseStore
from http_api.app import create_app
from http_api.deferred import DeferredRoutes
from infermcp import MCP_HTTP_PATHS, mcp_http
from mcp_server import build_server, http_transports, security_settings
from tests.e2e.conftest import free_port
from tests.http_api.fakes import FakeModel
from tests.mcp_server.conftest import Gate, registry_of


def test_the_deferred_mcp_paths_are_the_transports_paths() -> None:
    """infermcp answers MCP_HTTP_PATHS until the SDK's routes are built (http_api/deferred.py):
    each request a transport serves must reach them, and each of them lead to a transport."""
    transports = http_transports(build_server(registry_of(FakeModel)),
                                 security_settings("127.0.0.1"))
    deferred = DeferredRoutes(MCP_HTTP_PATHS, lambda: (transports.routes,
                                                       transports.lifespan)).routes
    for method, path in (("POST", "/mcp"), ("GET", "/sse"), ("POST", "/messages/")):
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
        assert [r.matches(scope)[0] for r in deferred].count(Match.FULL) == 1, path
        assert [r.matches(scope)[0] for r in transports.routes].count(Match.FULL) == 1, path
    assert len(transports.routes) == len(MCP_HTTP_PATHS)


async def test_mcp_over_http_answers_while_the_models_load() -> None:
    """infermcp builds the SDK's routes once the models settle, or at a first MCP request,
    whichever is first: a client that connects while the model loads is answered at once
    (health says loading), not held until the load ends."""
    gate = Gate()
    models = registry_of(gate.load)
    mcp = mcp_http(models, None, None, "127.0.0.1", [], [], stateless=False)
    app = create_app(models, responses_store=SQLiteResponseStore(), routes=mcp.routes,
                     lifespans=[mcp.lifespan])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(20):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"http://127.0.0.1:{port}/health")).status_code:
                            break
                    await anyio.sleep(0.02)
        async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=30) as client:
            health = await client.call_tool("health", {})
        assert health.structured_content is not None
        assert health.structured_content["status"] == "loading"
        assert not models.settled.is_set()
    finally:
        gate.open()
        server.should_exit = True
        thread.join(30)
