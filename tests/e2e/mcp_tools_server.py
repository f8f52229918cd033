"""A small MCP server with deterministic tools, for the MCP client tests: run as
``python mcp_tools_server.py stdio`` or ``python mcp_tools_server.py http PORT ACCESS_LOG``
(Streamable HTTP at /mcp; every request's method, path and headers appended to ACCESS_LOG)."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("calc", instructions="Deterministic tools for tests.")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers and return their sum."""
    return str(a + b)


@server.tool()
def fail(reason: str) -> str:
    """A tool that always fails, with the given reason."""
    raise ToolError(f"failed on purpose: {reason}")


def extra() -> str:
    """A tool that grow adds."""
    return "extra"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool extra, and tell the client that the tool list changed."""
    server.add_tool(extra)
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool()
async def sleep() -> str:
    """Sleep for a minute, then say done."""
    await anyio.sleep(60)
    return "done"


def _logged(app: Any, path: str) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            with open(path, "a") as log:
                log.write(json.dumps({"method": scope["method"], "path": scope["path"],
                                      "headers": headers}) + "\n")
        await app(scope, receive, send)

    return wrapped


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        app = _logged(server.streamable_http_app(), sys.argv[3])
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
