"""Chat completions with ``mcp_servers`` (an extension): the server calls the named MCP
servers' tools for the model, in a loop, before it answers.

The loop is the Responses API's (:mod:`core.responses.handler`): the chat request becomes a
response request of the same messages, tools and sampling, not stored, with each server's calls
run without approval (the operator configured them; the request names them). Its output comes
back in the chat shape: the text, the client-side ``tool_calls``, and ``mcp_calls`` (each run
call's ``id``, ``server_label``, ``name``, ``arguments``, ``output``, ``error``), streamed as
``delta.mcp_calls`` chunks as each call ends.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.errors import InvalidRequestError
from core.responses.handler import ResponseRequest, ResponseRun, start_response
from http_api import sse
from http_api.access import note_tokens
from http_api.protocol import ChatCompletionRequest
from http_api.sse import sse_response, until_disconnected

MCP_CALL_FIELDS = ("id", "server_label", "name", "arguments", "output", "error")


async def mcp_chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    if body.n != 1 or body.logprobs or body.grammar:
        raise InvalidRequestError("mcp_servers works with n = 1, without logprobs or grammar",
                                  param="mcp_servers")
    chat = body.to_request()
    servers = [_server(i, s) for i, s in enumerate(body.mcp_servers or [])]
    run = await start_response(request.app.state.models, request.app.state.responses,
                               ResponseRequest(
                                   input=None, messages=chat.messages, params=chat.params,
                                   model=chat.model, store=False,
                                   text_format=_text_format(chat.response_format),
                                   tools=[*(chat.tools or []), *servers],
                                   tool_choice=chat.tool_choice,
                                   parallel_tool_calls=chat.parallel_tool_calls,
                                   truncation="auto" if chat.truncate else "disabled",
                                   max_tool_calls=body.max_tool_calls),
                               request.app.state.mcp_host)
    chat_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return sse_response(request, _chunks(run, body, chat_id, created), run.abort)
    response = await until_disconnected(request, run.collect(), run.abort)
    return JSONResponse(_completion(response, chat_id, created))


def _server(i: int, entry: str | dict[str, Any]) -> dict[str, Any]:
    tool = {"server_label": entry} if isinstance(entry, str) else dict(entry)
    if tool.get("require_approval", "never") != "never" or "server_url" in tool:
        raise InvalidRequestError(f"mcp_servers[{i}]: configured servers only, run without "
                                  "approval (the Responses API has approvals and server_url)",
                                  param=f"mcp_servers[{i}]")
    return {**tool, "type": "mcp", "require_approval": "never"}


def _text_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if response_format and response_format.get("type") == "json_schema":
        return {"type": "json_schema", **(response_format.get("json_schema") or {})}
    return response_format


def _completion(response: dict[str, Any], chat_id: str, created: int) -> dict[str, Any]:
    output = response["output"]
    text = "".join(part["text"] for item in output if item["type"] == "message"
                   for part in item["content"])
    calls = [_call(item) for item in output if item["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""),
                               "refusal": None,
                               "mcp_calls": [_mcp_call(i) for i in output
                                             if i["type"] == "mcp_call"]}
    if calls:
        message["tool_calls"] = calls
    usage = response["usage"] or {}
    note_tokens(usage.get("input_tokens", 0), usage.get("output_tokens", 0))
    return {"id": chat_id, "object": "chat.completion", "created": created,
            "model": response["model"], "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _finish(response, bool(calls))}],
            "usage": _usage(usage)}


def _call(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _mcp_call(item: dict[str, Any]) -> dict[str, Any]:
    return {key: item.get(key) for key in MCP_CALL_FIELDS}


def _finish(response: dict[str, Any], called: bool) -> str:
    return "tool_calls" if called else "length" if response["status"] == "incomplete" \
        else "stop"


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def _chunks(run: ResponseRun, body: ChatCompletionRequest, chat_id: str, created: int
                  ) -> AsyncIterator[dict[str, Any]]:
    chunk = functools.partial(sse.chunk, chat_id, created, run.model.id,
                              "chat.completion.chunk", body.include_usage)

    def delta(fields: dict[str, Any]) -> dict[str, Any]:
        return chunk([{"index": 0, "delta": fields, "logprobs": None, "finish_reason": None}])

    yield delta({"role": "assistant", "content": ""})
    calls: dict[str, int] = {}  # function_call item id -> its index among tool_calls
    final: dict[str, Any] = {}
    async for event in run.events():
        kind, item = event["type"], event.get("item") or {}
        if kind == "response.output_text.delta":
            yield delta({"content": event["delta"]})
        elif kind == "response.output_item.added" and item.get("type") == "function_call":
            calls[item["id"]] = len(calls)
            yield delta({"tool_calls": [{"index": calls[item["id"]], **_call(item)}]})
        elif kind == "response.function_call_arguments.delta":
            yield delta({"tool_calls": [{"index": calls[event["item_id"]],
                                         "function": {"arguments": event["delta"]}}]})
        elif kind == "response.output_item.done" and item.get("type") == "mcp_call":
            yield delta({"mcp_calls": [_mcp_call(item)]})
        elif kind in ("response.completed", "response.incomplete"):
            final = event["response"]
    yield chunk([{"index": 0, "delta": {}, "logprobs": None,
                  "finish_reason": _finish(final, bool(calls))}])
    usage = final.get("usage") or {}
    note_tokens(usage.get("input_tokens", 0), usage.get("output_tokens", 0))
    if body.include_usage:
        last = chunk([])
        last["usage"] = _usage(usage)
        yield last
