"""POST /v1/chat/completions: OpenAI chat completions, JSON or SSE."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.chat.output_parser import ChatDelta, ToolCall
from core.serving.handlers import ChatChoice, Generation, prepare_chat, start_chat
from http_api import sse
from http_api.access import note_tokens
from http_api.body import read_json
from http_api.chat_mcp import mcp_chat_completions
from http_api.logprobs import chat_logprobs
from http_api.protocol import ChatCompletionRequest
from http_api.sse import sse_response, until_disconnected


async def chat_completions(request: Request) -> Response:
    body = ChatCompletionRequest.model_validate(await read_json(request))
    if body.mcp_servers:
        return await mcp_chat_completions(request, body)
    models = request.app.state.models
    gen = start_chat(models, await prepare_chat(models, body.to_request()))
    if body.stream:
        return sse_response(request, _chunks(gen, body), gen.abort)
    return JSONResponse(await until_disconnected(request, _complete(gen, body), gen.abort))


def _message(choice: ChatChoice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None}
    if choice.reasoning:
        message["reasoning_content"] = choice.reasoning
    if choice.tool_calls:
        message["content"] = choice.content or None
        message["tool_calls"] = [_call(c, c.arguments) for c in choice.tool_calls]
    return message


def _call(call: ToolCall, arguments: str) -> dict[str, Any]:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": arguments}}


async def _complete(gen: Generation, body: ChatCompletionRequest) -> dict[str, Any]:
    choices = await gen.collect_chat()
    tokenizer = gen.model.tokenizer
    usage = gen.usage()
    note_tokens(usage.prompt_tokens, usage.completion_tokens)
    return {
        "id": gen.id, "object": "chat.completion", "created": gen.created, "model": gen.model.id,
        "choices": [{
            "index": index,
            "message": _message(c),
            "logprobs": chat_logprobs(tokenizer, c.completion.logprobs) if body.logprobs else None,
            "finish_reason": c.finish_reason,
        } for index, c in enumerate(choices)],
        "system_fingerprint": None,
        "usage": usage.as_openai(),
    }


def _delta(delta: ChatDelta) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if delta.reasoning:
        out["reasoning_content"] = delta.reasoning
    if delta.content:
        out["content"] = delta.content
    calls = [{"index": c.index, **_call(c, "")} for c in delta.new_calls]
    calls += [{"index": i, "function": {"arguments": a}} for i, a in delta.arguments]
    if calls:
        out["tool_calls"] = calls
    return out


async def _chunks(gen: Generation, body: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
    chunk = functools.partial(sse.chunk, gen.id, gen.created, gen.model.id, "chat.completion.chunk",
                              body.include_usage)

    for index in range(len(gen.streams)):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    async for index, delta, out in gen.chat_deltas():
        logprobs = chat_logprobs(gen.model.tokenizer, out.logprobs) if body.logprobs else None
        if delta or logprobs:
            yield chunk([{"index": index, "delta": _delta(delta), "logprobs": logprobs,
                          "finish_reason": None}])
        if out.finish_reason is not None:
            yield chunk([{"index": index, "delta": {}, "logprobs": None,
                          "finish_reason": out.finish_reason}])
    usage = gen.usage()
    note_tokens(usage.prompt_tokens, usage.completion_tokens)
    if body.include_usage:
        final = chunk([])
        final["usage"] = usage.as_openai()
        yield final
