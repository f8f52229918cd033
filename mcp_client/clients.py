"""The MCP client the Responses API's remote MCP tools run on (the official ``mcp`` SDK).

:class:`McpClients` keeps one session open to each server of the ``--mcp-config`` file,
connected in the background while the server runs: a server that fails is logged, reported in
``/health`` and retried (with a growing pause), never fatal. Its tools are listed from the server
for each conversation that lists them, so a changed list is always seen (servers of the
2026-07-28 era send ``tools/list_changed`` only to clients that subscribed to it, older ones
on their session: listing anew covers both). A request's own ``server_url`` is reached only
when it matches an
``--mcp-allow-url`` pattern (none by default; matched as :mod:`core.chat.url_patterns` says, host
by host, never across the host), with a session for the request; nothing else is ever contacted
on a request's behalf. Calls are bounded by ``tool_timeout_secs`` and at most
``max_concurrent_calls`` run at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from core.chat.url_patterns import UrlPattern, http_url, permitted
from core.errors import InvalidRequestError
from core.responses.mcp import McpResult, McpServerRef, McpTool, McpUnavailable
from mcp_client.config import McpClientConfig, McpServerConfig

if TYPE_CHECKING:  # the SDK is imported by the first connection (1 s of a server's start-up)
    from mcp.client import Client
    from mcp.types import CallToolResult

log = logging.getLogger("infermcp.mcp_client")

RETRY_MAX_S = 30.0


@dataclass
class _Server:
    """A configured server's session and what is known of it."""

    config: McpServerConfig
    status: str = "connecting"
    error: str | None = None
    client: Client | None = None
    tools: list[McpTool] = field(default_factory=list)
    broken: anyio.Event = field(default_factory=anyio.Event)

    def exposed(self, name: str) -> str:
        prefix = self.config.tool_prefix
        return f"{prefix}_{name}" if prefix else name

    def own(self, name: str) -> str:
        prefix = self.config.tool_prefix
        return name.removeprefix(f"{prefix}_") if prefix else name


class McpClients:
    """Configured servers and allowed URLs (see the module docstring); the
    :class:`core.responses.mcp.McpToolHost` of the HTTP API."""

    def __init__(self, config: McpClientConfig | None = None,
                 allow_urls: Sequence[UrlPattern] = ()) -> None:
        self.config = config or McpClientConfig()
        self.allow_urls = tuple(allow_urls)
        self._servers = {s.label: _Server(s) for s in self.config.servers if s.enabled}
        self._calls = anyio.Semaphore(self.config.max_concurrent_calls)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Keep every configured server connected while the block runs."""
        async with anyio.create_task_group() as group:
            for server in self._servers.values():
                group.start_soon(self._maintain, server)
            try:
                yield
            finally:
                group.cancel_scope.cancel()

    def health(self) -> dict[str, Any]:
        """Each configured server: ok, connecting or error, its tool count and error."""
        return {label: {"status": s.status, "tools": len(s.tools), "error": s.error}
                for label, s in self._servers.items()}

    def check(self, server: McpServerRef) -> None:
        if server.url is None:
            if server.label not in self._servers:
                known = ", ".join(self._servers) or "none"
                raise InvalidRequestError(
                    f"no MCP server is configured as {server.label!r} (configured: {known}); "
                    "give server_url for a remote one", param="tools")
            return
        target = http_url(server.url)
        if target is None or not permitted(target, self.allow_urls):
            allowed = ", ".join(p.text for p in self.allow_urls) \
                or "none: start the server with --mcp-allow-url"
            raise InvalidRequestError(
                f"server_url {server.url!r} is not allowed; allowed URL patterns: {allowed}",
                param="tools")

    async def list_tools(self, server: McpServerRef) -> list[McpTool]:
        if server.url is not None:
            async with self._session(server) as client:
                return await _list(client)
        state = self._servers[server.label]
        if state.client is None:
            raise McpUnavailable(f"the MCP server {server.label!r} is unreachable: "
                                 f"{state.error or 'not connected yet'}")
        try:
            await self._refresh(state)
        except Exception as exc:  # the session broke: reconnect
            state.broken.set()
            raise McpUnavailable(f"the MCP server {server.label!r} failed: "
                                 f"{_reason(exc)}") from exc
        return [McpTool(state.exposed(t.name), t.description, t.input_schema, t.annotations)
                for t in state.tools]

    async def call_tool(self, server: McpServerRef, name: str, arguments: dict[str, Any]
                        ) -> McpResult:
        timeout = self.config.tool_timeout_s
        async with self._calls:
            try:
                with anyio.fail_after(timeout):
                    if server.url is not None:
                        async with self._session(server) as client:
                            return _result(await client.call_tool(name, arguments))
                    state = self._servers[server.label]
                    if state.client is None:
                        return McpResult(None, f"the MCP server {server.label!r} is "
                                               f"unreachable: {state.error or 'not connected'}")
                    return _result(await state.client.call_tool(state.own(name), arguments))
            except TimeoutError:
                return McpResult(None, f"the tool {name!r} timed out after {timeout:g} s")
            except McpUnavailable as exc:
                return McpResult(None, str(exc))
            except Exception as exc:  # the session broke: report it, and reconnect
                if server.url is None:
                    self._servers[server.label].broken.set()
                return McpResult(None, f"the MCP server {server.label!r} failed: "
                                       f"{_reason(exc)}")

    async def _maintain(self, server: _Server) -> None:
        pause = 1.0
        while True:
            try:
                async with _connect(server.config) as client:
                    server.client = client
                    await self._refresh(server)
                    server.status, server.error, pause = "ok", None, 1.0
                    log.info("MCP server %r: connected, %d tools", server.config.label,
                             len(server.tools))
                    await server.broken.wait()
            except Exception as exc:
                server.status, server.error = "error", _reason(exc)
                log.warning("MCP server %r: %s (retrying in %.0f s)", server.config.label,
                            server.error, pause)
            finally:
                server.client, server.broken = None, anyio.Event()
            await anyio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_S)

    async def _refresh(self, server: _Server) -> None:
        assert server.client is not None
        server.tools = await _list(server.client)

    @contextlib.asynccontextmanager
    async def _session(self, server: McpServerRef) -> AsyncIterator[Client]:
        """A session of this request's own (allowed) server_url, with its headers."""
        assert server.url is not None
        config = McpServerConfig(server.label, "http", url=server.url,
                                 headers=server.headers, timeout_s=self.config.tool_timeout_s)
        try:
            async with _connect(config) as client:
                yield client
        except McpUnavailable:
            raise
        except Exception as exc:
            raise McpUnavailable(f"the MCP server {server.label!r} is unreachable: "
                                 f"{_reason(exc)}") from exc


@contextlib.asynccontextmanager
async def _connect(config: McpServerConfig) -> AsyncIterator[Client]:
    """A session with one server: stdio for a process, Streamable HTTP (then legacy SSE)
    for a URL."""
    import httpx2
    from mcp.client import Client
    from mcp.client.sse import sse_client
    from mcp.client.stdio import StdioServerParameters, get_default_environment
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

    options: dict[str, Any] = {"read_timeout_seconds": config.timeout_s}
    if config.transport == "process":
        params = StdioServerParameters(command=config.command, args=list(config.args),
                                       env={**get_default_environment(), **config.env},
                                       cwd=config.work_dir)
        async with Client(params, **options) as client:
            yield client
        return
    http = create_mcp_http_client(headers=config.headers,
                                  timeout=httpx2.Timeout(config.timeout_s))
    async with http:
        try:
            client = Client(streamable_http_client(config.url, http_client=http), **options)
            await client.__aenter__()
        except Exception:  # an older server: the legacy SSE transport
            client = Client(sse_client(config.url, headers=config.headers,
                                       timeout=config.timeout_s), **options)
            await client.__aenter__()
        try:
            yield client
        finally:
            await client.__aexit__(None, None, None)


async def _list(client: Client) -> list[McpTool]:
    tools, cursor = [], None
    while True:
        page = await client.list_tools(cursor=cursor, cache_mode="refresh")
        tools += [McpTool(t.name, t.description or "", dict(t.input_schema or {}),
                          t.annotations.model_dump(exclude_none=True) if t.annotations else None)
                  for t in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return tools


def _result(result: CallToolResult) -> McpResult:
    from mcp.types import TextContent

    text = "".join(c.text for c in result.content if isinstance(c, TextContent))
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content)
    if result.is_error:
        return McpResult(None, text or "the tool failed")
    return McpResult(text)


def _reason(exc: BaseException) -> str:
    """One line for an exception, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return " ".join(str(exc).split()) or type(exc).__name__

