"""The MCP front end: the shared engine as MCP tools and resources over stdio, SSE and HTTP."""

from mcp_server.server import build_server
from mcp_server.transports import (
           MCPHttp,
           http_transports,
           security_settings,
           serve_stdio,
)

__all__ = ["MCPHttp", "build_server", "http_transports", "security_settings", "serve_stdio"]
