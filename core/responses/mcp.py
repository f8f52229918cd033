"""Remote MCP tools in the Responses API (``tools: [{"type": "mcp", ...}]``), as OpenAI defines
them: what a request asks for, and the seam to the MCP client that reaches the servers.

A tool entry names a server by ``server_label`` (one the operator configured with
``--mcp-config``) or gives a ``server_url`` (reached only when ``--mcp-allow-url`` permits it),
with ``allowed_tools``, ``require_approval`` (``always`` by default, as OpenAI's; ``never``; or
``{"never": {"tool_names": [...]}}`` / ``{"always": {...}}``) and ``headers``, which are used for
the connection and never stored or echoed. The MCP client itself (the ``mcp`` SDK) lives in the
front end's package :mod:`mcp_client`; this module sees it only through :class:`McpToolHost`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import InvalidRequestError


@dataclass(frozen=True)
class McpServerRef:
    """One ``{"type": "mcp"}`` tool entry of a request."""

    label: str
    url: str | None = None
    allowed_tools: tuple[str, ...] | None = None
    require_approval: Any = "always"
    headers: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    description: str | None = None

    def needs_approval(self, tool: str) -> bool:
        policy = self.require_approval
        if policy in ("always", None):
            return True
        if policy == "never":
            return False
        if isinstance(policy, dict):
            never = (policy.get("never") or {}).get("tool_names") or []
            return tool not in never  # listed under always, or not listed: ask
        return True

    def echo(self) -> dict[str, Any]:
        """The entry as a response object shows it: no header values."""
        return {"type": "mcp", "server_label": self.label, "server_url": self.url,
                "allowed_tools": list(self.allowed_tools) if self.allowed_tools else None,
                "require_approval": self.require_approval, "headers": None,
                "server_description": self.description}


@dataclass(frozen=True)
class McpTool:
    """A tool an MCP server lists."""

    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None

    def as_item(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "input_schema": self.input_schema, "annotations": self.annotations}

    def as_function(self) -> dict[str, Any]:
        """The function the model calls: the tool's schema, closed to the properties it names
        unless it says otherwise (as OpenAI's strict functions; servers drop the others, and a
        small model otherwise fills its token budget with invented ones)."""
        schema = {"type": "object", "properties": {}, **self.input_schema}
        schema.setdefault("additionalProperties", False)
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": schema}}


@dataclass(frozen=True)
class McpResult:
    """A tool's output as text, or the error that stopped it."""

    output: str | None
    error: str | None = None


class McpToolHost(Protocol):
    """Reaches MCP servers for the Responses API (the front end's MCP client)."""

    def check(self, server: McpServerRef) -> None:
        """Raise a 400 if ``server`` names no configured server and its URL is not allowed
        (nothing is contacted)."""

    async def list_tools(self, server: McpServerRef) -> list[McpTool]:
        """The server's tools; raises :class:`McpUnavailable` when it cannot be reached."""

    async def call_tool(self, server: McpServerRef, name: str, arguments: dict[str, Any]
                        ) -> McpResult:
        """Run one tool (bounded by the configured timeout); failures are results."""

    def health(self) -> dict[str, Any]:
        """Each configured server's state, for ``/health``."""


class McpUnavailable(Exception):
    """An MCP server could not be reached or listed."""


class NoMcpHost:
    """The host when no MCP client is configured: every ``mcp`` tool is a 400."""

    def check(self, server: McpServerRef) -> None:
        raise InvalidRequestError(
            f"no MCP server is configured as {server.label!r} and remote server URLs are not "
            "allowed (start the server with --mcp-config, or --mcp-allow-url for URLs)",
            param="tools")

    async def list_tools(self, server: McpServerRef) -> list[McpTool]:
        raise McpUnavailable("no MCP client")

    async def call_tool(self, server: McpServerRef, name: str, arguments: dict[str, Any]
                        ) -> McpResult:
        return McpResult(None, "no MCP client")

    def health(self) -> dict[str, Any]:
        return {}


def split_tools(tools: list[dict[str, Any]] | None
                ) -> tuple[list[dict[str, Any]], list[McpServerRef]]:
    """A request's function tools, and its MCP server entries parsed (a 400 for a bad one)."""
    functions, servers = [], []
    for i, tool in enumerate(tools or []):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            servers.append(_server(i, tool))
        else:
            functions.append(tool)
    labels = [s.label for s in servers]
    if len(set(labels)) != len(labels):
        raise InvalidRequestError("two mcp tools have the same server_label", param="tools")
    return functions, servers


def _server(i: int, tool: dict[str, Any]) -> McpServerRef:
    label = tool.get("server_label")
    if not isinstance(label, str) or not label:
        raise InvalidRequestError(f"tools[{i}].server_label must be a non-empty string",
                                  param=f"tools[{i}].server_label")
    url = tool.get("server_url")
    if url is not None and not isinstance(url, str):
        raise InvalidRequestError(f"tools[{i}].server_url must be a string",
                                  param=f"tools[{i}].server_url")
    allowed = tool.get("allowed_tools")
    if isinstance(allowed, dict):
        allowed = allowed.get("tool_names")
    if allowed is not None and not (isinstance(allowed, list)
                                    and all(isinstance(n, str) for n in allowed)):
        raise InvalidRequestError(f"tools[{i}].allowed_tools must be a list of tool names",
                                  param=f"tools[{i}].allowed_tools")
    headers = tool.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise InvalidRequestError(f"tools[{i}].headers must map names to strings",
                                  param=f"tools[{i}].headers")
    approval = tool.get("require_approval", "always")
    if not (approval in ("always", "never") or isinstance(approval, dict)):
        raise InvalidRequestError(f"tools[{i}].require_approval must be always, never or an "
                                  "object of tool names", param=f"tools[{i}].require_approval")
    return McpServerRef(label, url, tuple(allowed) if allowed is not None else None, approval,
                        dict(headers), tool.get("server_description"))
