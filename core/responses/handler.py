"""The Responses API handler both front ends share: create, retrieve and delete responses.

:func:`start_response` turns a :class:`ResponseRequest` into chat messages (the stored
conversation of ``previous_response_id``, then ``instructions`` as a system message and the new
``input`` items), runs them through the shared chat handler
(:func:`core.serving.handlers.start_chat`: routing, tools, structured output, prompt fitting) and
returns a :class:`ResponseRun`. Its :meth:`ResponseRun.events` yields the Responses API's events in
order (the HTTP stream numbers and frames them); :meth:`ResponseRun.collect` runs the same events
and returns the final response object. With ``store`` (the default) the response and its
conversation are saved before the final event, so a follow-up can continue from it at once. Store
calls block, so they run in a worker thread.

With remote MCP tools (:mod:`core.responses.mcp`) the run loops on the server: the servers'
tools are listed (once a conversation), the model generates, each MCP call it makes is run and
its result fed back, and the model generates again, until it answers without one, asks for an
approval, calls a client-side function, or ``max_tool_calls`` is reached.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio.to_thread

from core.chat.images import load_images, storable
from core.chat.tools import tool_format
from core.engine.params import SamplingParams
from core.errors import (
    ContextLengthError,
    InferError,
    InvalidRequestError,
    ResponseNotFoundError,
)
from core.responses.input import input_messages
from core.responses.mcp import McpToolHost, NoMcpHost, split_tools
from core.responses.mcp_session import McpSession, open_session
from core.responses.output import Event, ResponseOutput
from core.responses.store import ResponseStore, StoredResponse
from core.serving.chat_model import ServedModel
from core.serving.handlers import ChatRequest, Generation, Usage, start_chat
from core.serving.registry import ModelRegistry


@dataclass(frozen=True)
class ResponseRequest:
    """One ``POST /v1/responses`` (or MCP ``create_response``) call."""

    input: str | list[Any] | None
    params: SamplingParams
    model: str | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    text_format: dict[str, Any] | None = None  # text.format
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    truncation: str = "disabled"  # auto: drop the oldest tokens of an over-long conversation
    metadata: dict[str, str] | None = None
    user: str | None = None
    max_tool_calls: int | None = None
    messages: list[dict[str, Any]] | None = None  # chat messages given instead of input


@dataclass
class ResponseRun:
    """A response being generated: its id, its conversation so far and the engine streams."""

    id: str
    request: ResponseRequest
    model: ServedModel
    gen: Generation | None  # the generation under way (none yet in a tool loop)
    conversation: list[dict[str, Any]]  # stored history + the new input (no instructions)
    store: ResponseStore
    models: ModelRegistry | None = None
    chat: ChatRequest | None = None  # what each round of a tool loop generates from
    mcp: McpSession | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))

    def abort(self) -> None:
        if self.gen is not None:
            self.gen.abort()

    async def events(self) -> AsyncGenerator[Event, None]:
        """``response.created``, ``response.in_progress``, the output item events, then
        ``response.completed`` (or ``response.incomplete``) with the final, stored object."""
        yield {"type": "response.created", "response": self.snapshot()}
        yield {"type": "response.in_progress", "response": self.snapshot()}
        model = self.model
        output = ResponseOutput(tool_format(model.tokenizer.chat_template).open,
                                self.mcp.routes if self.mcp else None)
        if self.mcp is not None:
            async for event in self.mcp.prepare(output):
                yield event
        finish_reason, usage, calls = None, Usage(), 0
        while True:
            if self.mcp is not None:
                self.gen = self._round(output, calls)
            assert self.gen is not None
            async for _, delta, out in self.gen.chat_deltas():
                for event in output.feed(delta, out.finished):
                    yield event
                finish_reason = out.finish_reason or finish_reason
            usage = usage + self.gen.usage()
            if self.mcp is None:
                break
            for event in output.end_round():
                yield event
            if not output.pending:
                break
            for item in list(output.pending):
                calls += 1
                for event in await self.mcp.run(output, item):
                    yield event
            if any(i["type"] in ("mcp_approval_request", "function_call") for i in output.items):
                break
        for event in output.finish(finish_reason):
            yield event
        response = self.response("incomplete" if finish_reason == "length" else "completed",
                                 output.items, _usage(usage))
        if self.request.store:
            history = [*self.conversation, *input_messages(output.items, model.id)]
            record = StoredResponse(self.id, self.created_at, response, storable(history))
            await anyio.to_thread.run_sync(self.store.save, record)
        yield {"type": f"response.{response['status']}", "response": response}

    async def collect(self) -> dict[str, Any]:
        """Run to the end; the final response object (aborting the generation if cancelled)."""
        final: Event = {}
        try:
            async with contextlib.aclosing(self.events()) as events:
                async for event in events:
                    final = event
        finally:
            self.abort()
        return dict(final["response"])

    def _round(self, output: ResponseOutput, calls: int) -> Generation:
        """The next generation of a tool loop: the conversation with this response's items so
        far; a forced tool choice holds for the first round only, and once ``max_tool_calls``
        calls have run the model answers without tools."""
        assert self.chat is not None and self.models is not None and self.mcp is not None
        done = input_messages(output.items, self.model.id)
        choice = self.chat.tool_choice if calls == 0 and not self.mcp.approvals else "auto"
        functions = [*(self.chat.tools or []), *self.mcp.functions()]
        if calls >= (self.request.max_tool_calls or MAX_TOOL_CALLS):
            functions = []
        return start_chat(self.models, replace(
            self.chat, messages=[*self.chat.messages, *done], tools=functions or None,
            tool_choice=choice if functions else None))

    def snapshot(self) -> dict[str, Any]:
        """The response object while it is generating (no output yet)."""
        return self.response("in_progress", [], None)

    def failed(self, error: InferError) -> dict[str, Any]:
        """The response object of a run that failed with ``error``."""
        return self.response("failed", [], None, error={"code": error.code or "server_error",
                                                        "message": error.message})

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The response object, with OpenAI's fields (request settings echoed)."""
        r, params = self.request, self.request.params
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": incomplete, "instructions": r.instructions,
            "max_output_tokens": params.max_tokens, "max_tool_calls": r.max_tool_calls,
            "model": self.model.id, "output": output,
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "previous_response_id": r.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": r.store, "temperature": params.temperature,
            "text": {"format": r.text_format or {"type": "text"}},
            "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
            "tools": [*(_echo_tool(t) for t in split_tools(r.tools)[0]),
                      *(s.echo() for s in self.mcp.servers)] if self.mcp else
                     [_echo_tool(t) for t in r.tools or []], "top_logprobs": 0,
            "top_p": params.top_p, "truncation": r.truncation, "usage": usage,
            "user": r.user, "metadata": dict(r.metadata or {}),
            "completed_at": int(time.time()) if status == "completed" else None,
        }


async def start_response(models: ModelRegistry, store: ResponseStore,
                         request: ResponseRequest, mcp_host: McpToolHost | None = None
                         ) -> ResponseRun:
    """Route, load images and the previous conversation, convert, validate and submit; raises
    InferError (a 404 for an unknown ``previous_response_id``, a 400 for an MCP server that is
    neither configured nor allowed, or an image the model cannot read or the server will not
    fetch) before anything runs. ``mcp_host`` reaches MCP servers."""
    model = models.chat_model(request.model)
    images = functools.partial(load_images, policy=models.image_policy, model_id=model.id,
                               modalities=model.input_modalities)
    given = await images(request.messages) if request.messages is not None \
        else await images(request.input, where="input")
    functions, servers = split_tools(request.tools)
    session = None
    if servers:
        session = await anyio.to_thread.run_sync(
            open_session, mcp_host or NoMcpHost(), servers, store,
            request.previous_response_id, request.input)
        await session.list_new({str((t.get("function", t) or {}).get("name"))
                                for t in functions if isinstance(t, dict)})
    new = list(given) if request.messages is not None \
        else input_messages(given, model.id, model.input_modalities)
    history: list[dict[str, Any]] = []
    if request.previous_response_id is not None:
        previous = await anyio.to_thread.run_sync(store.get, request.previous_response_id)
        if previous is None:
            raise ResponseNotFoundError(request.previous_response_id,
                                        param="previous_response_id")
        # images sent with earlier turns are read again, not counted again
        history = await images(previous.history, where="previous_response_id", count=False)
    if not new and not (session and session.approvals):
        raise InvalidRequestError("'input' must not be empty", param="input")
    if request.truncation not in ("auto", "disabled"):
        raise InvalidRequestError("truncation must be 'auto' or 'disabled'", param="truncation")
    conversation = [*history, *new]
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    chat = ChatRequest(
        messages=[*system, *conversation], params=request.params, model=request.model,
        truncate=request.truncation == "auto", enable_thinking=False,
        response_format=response_format(request.text_format), tools=functions or None,
        tool_choice=_tool_choice(request.tool_choice, session),
        parallel_tool_calls=request.parallel_tool_calls)
    try:
        # with MCP tools the rounds start in events(), once the tools are listed
        gen = None if session else start_chat(models, chat)
    except ContextLengthError as exc:  # worded for the chat API's fields: use this API's
        raise ContextLengthError(_reworded(exc.message), param=_PARAMS.get(exc.param or "",
                                                                            exc.param)) from exc
    return ResponseRun(f"resp_{uuid.uuid4().hex}", request, model, gen, conversation, store,
                       models, chat, session)


def _tool_choice(choice: str | dict[str, Any] | None, session: McpSession | None
                 ) -> str | dict[str, Any] | None:
    """``{"type": "mcp", "server_label", "name"?}``: that tool, as a named function (or any
    tool, without a name)."""
    if not (isinstance(choice, dict) and choice.get("type") == "mcp"):
        return choice
    if session is None or choice.get("server_label") not in {s.label for s in session.servers}:
        raise InvalidRequestError("tool_choice names an MCP server that is not among the tools",
                                  param="tool_choice")
    name = choice.get("name")
    return {"type": "function", "function": {"name": name}} if name else "required"


async def get_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    """The stored response object; a 404 if there is none (or it was not stored)."""
    record = await anyio.to_thread.run_sync(store.get, response_id)
    if record is None:
        raise ResponseNotFoundError(response_id)
    return record.response


async def delete_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    """Delete a stored response and its conversation; a 404 if there is none."""
    if not await anyio.to_thread.run_sync(store.delete, response_id):
        raise ResponseNotFoundError(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def response_format(text_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` (flat: ``{"type": "json_schema", "name", "schema", "strict"}``) as the
    chat API's ``response_format`` (nested under ``json_schema``)."""
    kind = None if text_format is None else text_format.get("type")
    if kind is None or kind in ("text", "json_object"):
        return text_format
    if kind != "json_schema":
        raise InvalidRequestError(f"text.format type {kind!r} is not supported; use text, "
                                  "json_object or json_schema", param="text.format.type")
    spec = {k: v for k, v in (text_format or {}).items() if k != "type"}
    if not isinstance(spec.get("schema"), dict):
        raise InvalidRequestError("text.format.schema must be a JSON schema object",
                                  param="text.format.schema")
    return {"type": "json_schema", "json_schema": spec}


_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens"}
MAX_TOOL_CALLS = 8  # MCP calls a response runs when the request sets no max_tool_calls


def _reworded(message: str) -> str:
    return message.replace("set truncate_sequence to true", "set truncation to 'auto'") \
        .replace("max_tokens", "max_output_tokens")


def _usage(usage: Usage) -> dict[str, Any]:
    """The generation's tally under the Responses API's names."""
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens}


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool in the Responses (flat) form, whichever form it came in."""
    fn = tool.get("function", tool) if isinstance(tool, dict) else {}
    if not isinstance(fn, dict):
        return dict(tool)
    return {"type": "function", "name": fn.get("name"), "description": fn.get("description"),
            "parameters": fn.get("parameters"), "strict": fn.get("strict", True)}
