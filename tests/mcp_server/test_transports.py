"""The HTTP transports' routes, and the paths the server answers for them before they exist."""

from __future__ import annotations

from starlette.routing import Match

from http_api.deferred import DeferredRoutes
from infermcp import MCP_HTTP_PATHS
from mcp_server import build_server, http_transports, security_settings
from tests.http_api.fakes import FakeModel
from tests.mcp_server.conftest import registry_of


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
