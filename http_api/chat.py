"""POST /v1/chat/completions: OpenAI chat completions, JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.handlers import Generation, start_chat, usage
from http_api.body import read_json
from http_api.logprobs import chat_logprobs
from http_api.protocol import ChatCompletionRequest
from http_api.sse import sse_response, until_disconnected


async def chat_completions(request: Request) -> Response:
    body = ChatCompletionRequest.model_validate(await read_json(request))
    gen = start_chat(request.app.state.models, body.to_request())
    if body.stream:
        return sse_response(request, _chunks(gen, body), gen.abort)
    return JSONResponse(await until_disconnected(request, _complete(gen, body), gen.abort))


async def _complete(gen: Generation, body: ChatCompletionRequest) -> dict[str, Any]:
    completions = await gen.collect()
    tokenizer = gen.model.tokenizer
    choices = [{
        "index": index,
        "message": {"role": "assistant", "content": c.text, "refusal": None},
        "logprobs": chat_logprobs(tokenizer, c.logprobs) if body.logprobs else None,
        "finish_reason": c.finish_reason,
    } for index, c in enumerate(completions)]
    completion_tokens = sum(c.num_output_tokens for c in completions)
    return {
        "id": gen.id, "object": "chat.completion", "created": gen.created, "model": gen.model.id,
        "choices": choices, "system_fingerprint": None,
        "usage": usage(completions[0].num_prompt_tokens, completion_tokens),
    }


async def _chunks(gen: Generation, body: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        c = {"id": gen.id, "object": "chat.completion.chunk", "created": gen.created,
             "model": gen.model.id, "system_fingerprint": None, "choices": choices}
        if body.include_usage:
            c["usage"] = None
        return c

    for index in range(len(gen.streams)):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    prompt_tokens, output_tokens = 0, [0] * len(gen.streams)
    async for index, out in gen.outputs():
        prompt_tokens, output_tokens[index] = out.num_prompt_tokens, out.num_output_tokens
        logprobs = chat_logprobs(gen.model.tokenizer, out.logprobs) if body.logprobs else None
        if out.text or logprobs:
            yield chunk([{"index": index, "delta": {"content": out.text}, "logprobs": logprobs,
                          "finish_reason": None}])
        if out.finish_reason is not None:
            yield chunk([{"index": index, "delta": {}, "logprobs": None,
                          "finish_reason": out.finish_reason}])
    if body.include_usage:
        final = chunk([])
        final["usage"] = usage(prompt_tokens, sum(output_tokens))
        yield final
