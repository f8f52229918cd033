"""MCP over stdio, Streamable HTTP (/mcp) and legacy SSE (/sse), with Host/Origin checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import BaseRoute

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def security_settings(host: str, extra_hosts: list[str] | None = None,
                      extra_origins: list[str] | None = None) -> TransportSecuritySettings:
    """DNS-rebinding protection, always on: only these Host and Origin values are served."""
    names = list(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", "") and host not in names:
        names.append(f"[{host}]" if ":" in host else host)
    names += extra_hosts or []
    hosts = [f"{n}:*" for n in names] + names
    origins = [f"{scheme}://{n}:*" for n in names for scheme in ("http", "https")]
    origins += [f"{scheme}://{n}" for n in names for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins + (extra_origins or []))


@dataclass
class MCPHttp:
    """The MCP HTTP routes (/mcp, /sse, /messages/) and the lifespan they need to run."""

    routes: list[BaseRoute]
    lifespan: Callable[[], AbstractAsyncContextManager[None]]


def http_transports(server: MCPServer, security: TransportSecuritySettings,
                    stateless: bool = False) -> MCPHttp:
    """Streamable HTTP at /mcp and legacy SSE at /sse, ready to add to any Starlette app.

    ``stateless``: /mcp keeps no session (no ``Mcp-Session-Id``) and answers each POST with one
    JSON body, so any replica behind a load balancer can answer any request of a legacy-era
    client; the price is no server-to-client stream, no progress notifications and
    cancellations that do not reach the tool (MCP_SERVER.md, "Behind a load balancer").
    """
    streamable = server.streamable_http_app(streamable_http_path="/mcp",
                                            transport_security=security,
                                            stateless_http=stateless, json_response=stateless)
    sse = server.sse_app(sse_path="/sse", message_path="/messages/", transport_security=security)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    return MCPHttp(routes=[*streamable.routes, *sse.routes], lifespan=lifespan)


async def serve_stdio(server: MCPServer) -> None:
    """Serve over stdin/stdout; the SDK moves fd 1 to stderr so stray prints miss the wire."""
    await server.run_stdio_async()
