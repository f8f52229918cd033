"""One response's remote MCP tools: listing each server's tools once a conversation, the
function specs the model sees, running its calls (and the calls a user approved) through the
:class:`~core.responses.mcp.McpToolHost`, and the output items and events of all that."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidRequestError
from core.responses.mcp import McpServerRef, McpTool, McpToolHost, McpUnavailable
from core.responses.output import Event, ResponseOutput
from core.responses.store import ResponseStore

CHAIN_DEPTH = 64  # how far back previous_response_id is followed for listed tools, approvals


@dataclass
class McpSession:
    host: McpToolHost
    servers: list[McpServerRef]
    listed: dict[str, list[McpTool]] = field(default_factory=dict)  # earlier in the chain
    fresh: dict[str, list[McpTool] | str] = field(default_factory=dict)  # listed now, or error
    approvals: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    tools: dict[str, tuple[McpServerRef, McpTool]] = field(default_factory=dict)

    @property
    def routes(self) -> dict[str, tuple[str, bool]]:
        """Tool name -> (server label, whether a call needs approval), for the output."""
        return {name: (server.label, server.needs_approval(name))
                for name, (server, _) in self.tools.items()}

    def functions(self) -> list[dict[str, Any]]:
        """The MCP tools as function tools for the model."""
        return [tool.as_function() for _, tool in self.tools.values()]

    async def list_new(self, function_names: set[str]) -> None:
        """List the tools of the servers not listed earlier in the conversation (before the
        response starts, so that a tool named like a function tool is a 400)."""
        for server in self.servers:
            if server.label not in self.listed:
                try:
                    self.fresh[server.label] = await self.host.list_tools(server)
                except McpUnavailable as exc:
                    self.fresh[server.label] = str(exc)
        for server in self.servers:
            tools = self.listed.get(server.label) or self.fresh.get(server.label)
            for tool in tools if isinstance(tools, list) else []:
                if server.allowed_tools is None or tool.name in server.allowed_tools:
                    if tool.name in function_names or tool.name in self.tools:
                        raise InvalidRequestError(f"two tools are named {tool.name!r} (an MCP "
                                                  "tool and another tool)", param="tools")
                    self.tools[tool.name] = (server, tool)

    async def prepare(self, output: ResponseOutput) -> AsyncIterator[Event]:
        """An ``mcp_list_tools`` item for each server listed now (a failed one with its
        error), then the calls the input approved, run."""
        for label, tools in self.fresh.items():
            item: dict[str, Any] = {"id": f"mcpl_{uuid.uuid4().hex}", "type": "mcp_list_tools",
                                    "server_label": label, "tools": [], "error": None}
            for event in output.add_item(item):
                yield event
            yield output.event("response.mcp_list_tools.in_progress", item)
            if isinstance(tools, str):
                item["error"] = tools
                yield output.event("response.mcp_list_tools.failed", item)
            else:
                item["tools"] = [t.as_item() for t in tools]
                yield output.event("response.mcp_list_tools.completed", item)
            for event in output.item_done(item):
                yield event
        for request, approve in self.approvals:
            if approve:
                async for event in self._run_approved(output, request):
                    yield event

    async def _run_approved(self, output: ResponseOutput, request: dict[str, Any]
                            ) -> AsyncIterator[Event]:
        item = {"id": f"mcp_{uuid.uuid4().hex}", "type": "mcp_call", "status": "in_progress",
                "server_label": request["server_label"], "name": request["name"],
                "arguments": request["arguments"], "output": None, "error": None,
                "approval_request_id": request["id"]}
        for event in output.add_item(item):
            yield event
        yield output.event("response.mcp_call.in_progress", item)
        output.pending.append(item)
        for event in await self.run(output, item):
            yield event

    async def run(self, output: ResponseOutput, item: dict[str, Any]) -> list[Event]:
        """Run one pending ``mcp_call`` item; the events that close it."""
        server = next((s for s in self.servers if s.label == item["server_label"]), None)
        try:
            arguments = json.loads(item["arguments"] or "{}")
        except json.JSONDecodeError:
            arguments = None
        if server is None:
            return output.finish_mcp_call(item, None, f"no server {item['server_label']!r} "
                                          "among this request's tools")
        if not isinstance(arguments, dict):
            return output.finish_mcp_call(item, None, "the arguments are not a JSON object")
        result = await self.host.call_tool(server, item["name"], arguments)
        return output.finish_mcp_call(item, result.output, result.error)


def open_session(host: McpToolHost, servers: list[McpServerRef], store: ResponseStore,
                 previous_id: str | None, input: Any) -> McpSession:
    """Check every server against the host's allow-list (a 400, nothing contacted), find the
    tools listed and the approval requests made earlier in the ``previous_id`` chain, and the
    approvals the input answers. Reads the store: call it in a worker thread."""
    for server in servers:
        host.check(server)
    session = McpSession(host, servers)
    requests: dict[str, dict[str, Any]] = {}
    record = store.get(previous_id) if previous_id else None
    for _ in range(CHAIN_DEPTH):
        if record is None:
            break
        for item in record.response.get("output", []):
            if item.get("type") == "mcp_list_tools" and not item.get("error"):
                session.listed.setdefault(item["server_label"], [
                    McpTool(t["name"], t.get("description") or "", t.get("input_schema") or {},
                            t.get("annotations")) for t in item["tools"]])
            elif item.get("type") == "mcp_approval_request":
                requests.setdefault(item["id"], item)
        earlier = record.response.get("previous_response_id")
        record = store.get(earlier) if earlier else None
    for i, item in enumerate(input if isinstance(input, list) else []):
        if isinstance(item, dict) and item.get("type") == "mcp_approval_response":
            request = requests.get(str(item.get("approval_request_id")))
            if request is None:
                raise InvalidRequestError(
                    f"input[{i}].approval_request_id names no approval request of this "
                    "conversation", param=f"input[{i}].approval_request_id")
            session.approvals.append((request, bool(item.get("approve"))))
    return session
