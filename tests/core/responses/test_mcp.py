"""Remote MCP tools in a Responses request: parsing, approval policy, output items, history."""

from __future__ import annotations

from typing import Any

import pytest

from core.chat.output_parser import ChatDelta, ToolCall
from core.errors import InvalidRequestError
from core.responses.input import input_messages
from core.responses.mcp import McpServerRef, McpTool, NoMcpHost, split_tools
from core.responses.output import ResponseOutput

FUNCTION = {"type": "function", "name": "f", "parameters": {"type": "object"}}


def test_function_tools_and_mcp_servers_are_split() -> None:
    functions, servers = split_tools([FUNCTION, {
        "type": "mcp", "server_label": "calc", "allowed_tools": ["add"],
        "headers": {"Authorization": "Bearer s3cret"}, "require_approval": "never"}])
    assert functions == [FUNCTION]
    (calc,) = servers
    assert (calc.label, calc.allowed_tools, calc.headers) == (
        "calc", ("add",), {"Authorization": "Bearer s3cret"})
    assert "s3cret" not in repr(calc) and calc.echo()["headers"] is None


@pytest.mark.parametrize("tool", [
    {"type": "mcp"}, {"type": "mcp", "server_label": "a", "headers": {"x": 1}},
    {"type": "mcp", "server_label": "a", "require_approval": "sometimes"},
    {"type": "mcp", "server_label": "a", "allowed_tools": "add"},
])
def test_a_bad_mcp_tool_is_a_400(tool: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        split_tools([tool])


@pytest.mark.parametrize(("policy", "expected"), [
    ("always", {"add": True, "fail": True}), ("never", {"add": False, "fail": False}),
    ({"never": {"tool_names": ["add"]}}, {"add": False, "fail": True}),
    ({"always": {"tool_names": ["fail"]}}, {"add": True, "fail": True}),
])
def test_approval_follows_openais_shapes(policy: Any, expected: dict[str, bool]) -> None:
    server = McpServerRef("calc", require_approval=policy)
    assert {name: server.needs_approval(name) for name in expected} == expected


def test_without_an_mcp_client_an_mcp_tool_is_a_400() -> None:
    with pytest.raises(InvalidRequestError, match="--mcp-config"):
        NoMcpHost().check(McpServerRef("calc"))


def test_the_models_function_is_closed_to_the_named_properties() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    function = McpTool("add", "Add.", schema).as_function()["function"]
    assert function["parameters"]["additionalProperties"] is False
    assert McpTool("x", "", {**schema, "additionalProperties": True}).as_function()[
        "function"]["parameters"]["additionalProperties"] is True


def feed_call(output: ResponseOutput, name: str) -> list[dict[str, Any]]:
    call = ToolCall(0, name)
    events = output.feed(ChatDelta(new_calls=[call], arguments=[(0, '{"a": 1}')]))
    return events + output.end_round()


def test_an_mcp_call_streams_as_openai_does_and_waits_to_be_run() -> None:
    output = ResponseOutput(mcp_tools={"add": ("calc", False)})
    events = feed_call(output, "add")
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done"]
    (item,) = output.pending
    assert (item["type"], item["server_label"], item["arguments"]) == ("mcp_call", "calc",
                                                                       '{"a": 1}')
    done = output.finish_mcp_call(item, "2", None)
    assert [e["type"] for e in done] == ["response.mcp_call.completed",
                                         "response.output_item.done"]
    assert done[-1]["item"]["output"] == "2" and done[-1]["item"]["status"] == "completed"
    assert not output.pending


def test_a_call_that_needs_approval_is_an_approval_request() -> None:
    output = ResponseOutput(mcp_tools={"add": ("calc", True)})
    events = feed_call(output, "add")
    assert [e["type"] for e in events] == ["response.output_item.added",
                                           "response.output_item.done"]
    assert events[-1]["item"]["type"] == "mcp_approval_request" and not output.pending


def test_a_run_call_reads_back_as_the_call_and_its_output() -> None:
    items = [{"type": "mcp_list_tools", "server_label": "calc", "tools": []},
             {"type": "mcp_call", "id": "mcp_1", "name": "add", "arguments": '{"a": 1}',
              "output": None, "error": "boom", "status": "failed"},
             {"type": "mcp_approval_request", "id": "mcpr_1", "name": "add", "arguments": "{}",
              "server_label": "calc"}]
    assert input_messages(items, "m") == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "mcp_1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "mcp_1", "content": "Error: boom"}]
