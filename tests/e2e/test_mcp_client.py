"""The model calls MCP tools: the Responses API's ``mcp`` tools on a server started with
``--mcp-config`` (a stdio and a Streamable HTTP server of deterministic tools, and one that
is down) and ``--mcp-allow-url`` (the session's other infermcp process as a remote MCP server),
driven by the ``openai`` SDK. The small model's tool choice is forced; its arguments follow the
tool's schema and the server runs the call."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, free_port, launch

TOOLS_SERVER = Path(__file__).with_name("mcp_tools_server.py")
SECRET = "sekret-header-value-93731"


class ToolsServer:
    """The tools server over Streamable HTTP on a fixed port: its URL and access log; it can
    be stopped and started again."""

    def __init__(self, folder: Path) -> None:
        self.port, self.access = free_port(), folder / "access.log"
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.access.touch()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(TOOLS_SERVER), "http",
                                      str(self.port), str(self.access)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolsServer]:
    server = ToolsServer(tmp_path_factory.mktemp("mcp-tools"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tools_http(tools_server: ToolsServer) -> tuple[str, Path]:
    """The tools server's URL and its access log."""
    return tools_server.url, tools_server.access


@pytest.fixture(scope="module")
def mcp_server(server: Server, tools_http: tuple[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """infermcp with three configured MCP servers; the session server's URL is allowed."""
    folder = tmp_path_factory.mktemp("mcp-client")
    config = {"servers": [
        {"name": "calc", "source": {"type": "Process", "command": sys.executable,
                                    "args": [str(TOOLS_SERVER), "stdio"]}},
        {"name": "calc_http", "source": {"type": "Http", "url": tools_http[0]},
         "tool_prefix": "remote"},
        {"name": "down", "source": {"type": "Http", "url": "http://127.0.0.1:9/mcp",
                                    "timeout_secs": 2}},
    ], "tool_timeout_secs": 3}
    path = folder / "mcp.json"
    path.write_text(json.dumps(config))
    args = ["--seed", "0", "--max-seq-len", "2048", "--embedding-model", "none",
            "--mcp-config", str(path), "--mcp-allow-url", f"{server.base_url}/*"]
    with launch(args, folder / "server.log") as started:
        deadline = time.monotonic() + 60  # the configured servers connect in the background
        while started.health().get("mcp", {}).get("calc", {}).get("status") != "ok":
            assert time.monotonic() < deadline, started.health()
            time.sleep(0.2)
        yield started


@pytest.fixture(scope="module")
def client(mcp_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mcp_server.base_url}/v1", api_key="x", max_retries=0,
                         timeout=300)


def mcp_tool(label: str, **fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": label, **fields}


def items(response: Any, kind: str) -> list[Any]:
    return [item for item in response.output if item.type == kind]


def forced(client: openai.OpenAI, label: str, name: str, **fields: Any) -> Any:
    return client.responses.create(
        model="default", input="Use the tool.", max_output_tokens=64, temperature=0,
        tools=[mcp_tool(label, **fields.pop("tool", {"require_approval": "never"}))],
        tool_choice={"type": "mcp", "server_label": label, "name": name}, **fields)


def test_health_reports_each_configured_server(mcp_server: Server) -> None:
    report = mcp_server.health()["mcp"]
    assert report["calc"] == {"status": "ok", "tools": 4, "error": None}
    assert report["down"]["status"] in ("error", "connecting")


@pytest.mark.parametrize("label", ["calc", "calc_http"])
def test_a_call_without_approval_runs_and_the_model_answers(client: openai.OpenAI,
                                                            label: str) -> None:
    name = "add" if label == "calc" else "remote_add"
    response = forced(client, label, name, max_tool_calls=1)
    assert response.status in ("completed", "incomplete")  # the answer may reach the limit
    (listing,) = items(response, "mcp_list_tools")
    assert listing.server_label == label and not listing.error
    names = {"add", "fail", "grow", "sleep"}
    assert {t.name for t in listing.tools} == (names if label == "calc"
                                               else {f"remote_{n}" for n in names})
    call = items(response, "mcp_call")[0]
    arguments = json.loads(call.arguments)
    assert {"a", "b"} <= set(arguments)  # the schema allows more; the tool ignores them
    assert isinstance(arguments["a"], int) and isinstance(arguments["b"], int)
    assert call.output == str(arguments["a"] + arguments["b"]) and call.error is None
    kinds = [item.type for item in response.output]
    assert kinds.index("message") > kinds.index("mcp_call")  # the answer follows the output


def test_an_approval_request_then_approve_and_deny(client: openai.OpenAI) -> None:
    tool = mcp_tool("calc")  # require_approval: always, OpenAI's default
    first = forced(client, "calc", "add", tool={})
    (request,) = items(first, "mcp_approval_request")
    assert request.name == "add" and not items(first, "mcp_call")
    approved = client.responses.create(
        model="default", previous_response_id=first.id, tools=[tool], max_output_tokens=32,
        temperature=0, input=[{"type": "mcp_approval_response",
                               "approval_request_id": request.id, "approve": True}])
    assert approved.status in ("completed", "incomplete")
    assert not items(approved, "mcp_list_tools")  # listed earlier in the conversation
    call = items(approved, "mcp_call")[0]
    assert call.arguments == request.arguments
    requested = json.loads(request.arguments)
    assert call.output == str(requested["a"] + requested["b"])
    denied = client.responses.create(
        model="default", previous_response_id=first.id, tools=[tool], max_output_tokens=16,
        temperature=0, tool_choice="none", input=[{"type": "mcp_approval_response",
                                                   "approval_request_id": request.id,
                                                   "approve": False}])
    assert denied.status in ("completed", "incomplete") and not items(denied, "mcp_call")


def test_a_streamed_run_is_accepted_by_the_sdk(client: openai.OpenAI) -> None:
    events: list[str] = []
    with client.responses.stream(
            model="default", input="Add.", max_output_tokens=32, temperature=0,
            max_tool_calls=1, tools=[mcp_tool("calc", require_approval="never")],  # type: ignore[list-item]
            tool_choice={"type": "mcp", "server_label": "calc", "name": "add"}) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_response()
    order = ["response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
             "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
             "response.mcp_call_arguments.done", "response.mcp_call.completed"]
    assert [e for e in events if e in order][:1] == order[:1]
    positions = [events.index(e) for e in order]
    assert positions == sorted(positions), events
    call = items(final, "mcp_call")[0]
    arguments = json.loads(call.arguments)
    assert call.output == str(arguments["a"] + arguments["b"])


def test_an_unreachable_server_is_a_failed_listing_and_the_response_completes(
        client: openai.OpenAI) -> None:
    response = client.responses.create(model="default", input="Hi", max_output_tokens=8,
                                       tools=[mcp_tool("down")])  # type: ignore[list-item]
    assert response.status in ("completed", "incomplete") and response.error is None
    (listing,) = items(response, "mcp_list_tools")
    assert listing.error and "unreachable" in listing.error
    assert items(response, "message")


def test_a_tool_error_and_a_timeout_are_failed_calls(client: openai.OpenAI) -> None:
    failed = forced(client, "calc", "fail", max_tool_calls=1)
    call = items(failed, "mcp_call")[0]
    assert call.output is None and "failed on purpose" in call.error
    started = time.monotonic()
    slow = forced(client, "calc", "sleep", max_tool_calls=1)
    call = items(slow, "mcp_call")[0]
    assert call.error == "the tool 'sleep' timed out after 3 s"
    assert time.monotonic() - started < 30


def test_a_server_url_outside_the_allow_list_is_a_400_and_never_contacted(
        client: openai.OpenAI, tools_http: tuple[str, Path]) -> None:
    url, access = tools_http
    before = access.read_text()
    with pytest.raises(openai.BadRequestError, match="is not allowed"):
        client.responses.create(model="default", input="Hi",
                                tools=[mcp_tool("elsewhere", server_url=url)])  # type: ignore[list-item]
    assert access.read_text() == before


def test_an_allowed_remote_infermcp_and_its_headers_never_stored(
        client: openai.OpenAI, server: Server, state_dir: Path) -> None:
    """The session's infermcp is the remote MCP server: its list_models tool runs; the
    request's header reaches it but is neither echoed nor written to the store."""
    response = forced(client, "infermcp", "list_models", max_tool_calls=1, tool={
        "server_url": f"{server.base_url}/mcp", "require_approval": "never",
        "headers": {"X-Trace": SECRET}})
    call = items(response, "mcp_call")[0]
    assert call.error is None and server.model_id in call.output
    assert SECRET not in response.model_dump_json()
    stored = client.responses.retrieve(response.id)
    assert SECRET not in stored.model_dump_json()
    for file in state_dir.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file


def chat(client: openai.OpenAI, **fields: Any) -> Any:
    return client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Add two numbers."}],
        max_tokens=48, temperature=0, **fields)


def test_chat_completions_run_the_named_servers_tools(client: openai.OpenAI) -> None:
    out = chat(client, tool_choice={"type": "function", "function": {"name": "add"}},
               extra_body={"mcp_servers": ["calc"], "max_tool_calls": 1})
    choice = out.choices[0]
    (call,) = choice.message.model_extra["mcp_calls"]
    arguments = json.loads(call["arguments"])
    assert call["server_label"] == "calc" and call["name"] == "add" and call["error"] is None
    assert call["output"] == str(arguments["a"] + arguments["b"])
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert out.usage is not None and out.usage.completion_tokens > 0
    streamed = chat(client, stream=True,
                    tool_choice={"type": "function", "function": {"name": "add"}},
                    extra_body={"mcp_servers": ["calc"], "max_tool_calls": 1})
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    (call,) = [m for d in deltas for m in (d.model_extra or {}).get("mcp_calls") or []]
    assert call["output"] == str(sum(json.loads(call["arguments"])[k] for k in "ab"))


def test_chat_client_tools_beside_mcp_ones_and_a_clash(client: openai.OpenAI) -> None:
    lookup = {"type": "function", "function": {
        "name": "lookup", "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                       "required": ["word"], "additionalProperties": False}}}
    out = chat(client, tools=[lookup],  # type: ignore[list-item]
               tool_choice={"type": "function", "function": {"name": "lookup"}},
               extra_body={"mcp_servers": ["calc"]})
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    assert choice.message.tool_calls[0].function.name == "lookup"  # type: ignore[union-attr]
    assert choice.message.model_extra["mcp_calls"] == []
    clash = {"type": "function", "function": {**lookup["function"], "name": "add"}}
    with pytest.raises(openai.BadRequestError, match="two tools are named 'add'"):
        chat(client, tools=[clash], extra_body={"mcp_servers": ["calc"]})  # type: ignore[list-item]


def test_a_bad_mcp_config_ends_start_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"servers": [{"name": "x", "source": {"type": "Smoke"}}]}))
    result = subprocess.run([sys.executable, "-m", "infermcp", "serve", "--port", "1",
                             "--mcp-config", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"infermcp: error: {path}: servers[0].source.type must be Process or Http, not 'smoke'")


def wait_for(server: Server, label: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report = server.health()["mcp"][label]
        if report["status"] == status or time.monotonic() > deadline:
            return dict(report)
        time.sleep(0.2)


def test_tools_are_listed_again_when_the_server_says_they_changed(
        client: openai.OpenAI, mcp_server: Server) -> None:
    grown = forced(client, "calc", "grow", max_tool_calls=1)
    assert items(grown, "mcp_call")[0].output == "grown"
    listing = items(client.responses.create(model="default", input="Hi", max_output_tokens=4,
                                            tools=[mcp_tool("calc")]),  # type: ignore[list-item]
                    "mcp_list_tools")[0]
    assert "extra" in {t.name for t in listing.tools}
    assert mcp_server.health()["mcp"]["calc"]["tools"] == 5


def test_a_server_that_goes_away_is_reconnected(client: openai.OpenAI, mcp_server: Server,
                                                tools_server: ToolsServer) -> None:
    tools_server.stop()
    failed = forced(client, "calc_http", "remote_add", max_tool_calls=1)
    assert "failed" in items(failed, "mcp_list_tools")[0].error and not items(failed, "mcp_call")
    assert wait_for(mcp_server, "calc_http", "error")["status"] == "error"
    tools_server.start()
    assert wait_for(mcp_server, "calc_http", "ok")["status"] == "ok"
    again = forced(client, "calc_http", "remote_add", max_tool_calls=1)
    call = items(again, "mcp_call")[0]
    assert call.error is None and call.output == str(sum(
        json.loads(call.arguments)[k] for k in "ab"))


@pytest.mark.parametrize(("fields", "message"), [
    ({"n": 2, "extra_body": {"mcp_servers": ["calc"]}}, "mcp_servers works with n = 1"),
    ({"extra_body": {"mcp_servers": [{"server_label": "calc", "server_url": "http://x/"}]}},
     "configured servers only"),
    ({"extra_body": {"mcp_servers": ["nope"]}}, "no MCP server is configured as 'nope'"),
])
def test_bad_mcp_servers_in_chat_are_a_400(client: openai.OpenAI, fields: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message) as error:
        chat(client, **fields)
    assert error.value.status_code == 400 and error.value.body["param"] is not None  # type: ignore[index]


def test_a_tool_choice_naming_another_mcp_server_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="tool_choice names an MCP server"):
        client.responses.create(model="default", input="Hi", tools=[mcp_tool("calc")],  # type: ignore[list-item]
                                tool_choice={"type": "mcp", "server_label": "other"})  # type: ignore[arg-type]
