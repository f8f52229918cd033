"""POST /v1/completions: OpenAI (legacy) text completions, JSON or SSE."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.serving.handlers import Generation, start_completion
from http_api import sse
from http_api.access import note_tokens
from http_api.body import read_json
from http_api.logprobs import completion_logprobs
from http_api.protocol import CompletionRequest
from http_api.sse import sse_response, until_disconnected


async def completions(request: Request) -> Response:
    body = CompletionRequest.model_validate(await read_json(request))
    gen = start_completion(request.app.state.models, body.to_request())
    if body.stream:
        return sse_response(request, _chunks(gen, body), gen.abort)
    return JSONResponse(await until_disconnected(request, _complete(gen, body), gen.abort))


def _echoes(gen: Generation, body: CompletionRequest) -> list[str]:
    return [gen.prompt_text(i) if body.echo else "" for i in range(len(gen.streams))]


async def _complete(gen: Generation, body: CompletionRequest) -> dict[str, Any]:
    completions = await gen.collect()
    echoes = _echoes(gen, body)
    choices = []
    for index, c in enumerate(completions):
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(gen.model.tokenizer, c.logprobs, len(echoes[index]))
        choices.append({"index": index, "text": echoes[index] + c.text, "logprobs": logprobs,
                        "finish_reason": c.finish_reason})
    usage = gen.usage()
    note_tokens(usage.prompt_tokens, usage.completion_tokens)
    return {"id": gen.id, "object": "text_completion", "created": gen.created,
            "model": gen.model.id, "choices": choices, "system_fingerprint": None,
            "usage": usage.as_openai()}


async def _chunks(gen: Generation, body: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
    chunk = functools.partial(sse.chunk, gen.id, gen.created, gen.model.id, "text_completion",
                              body.include_usage)

    echoes = _echoes(gen, body)
    offsets = [len(e) for e in echoes]
    for index, echo in enumerate(echoes):
        if echo:
            yield chunk([{"index": index, "text": echo, "logprobs": None, "finish_reason": None}])
    async for index, out in gen.outputs():
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(gen.model.tokenizer, out.logprobs, offsets[index])
            offsets[index] += sum(len(t) for t in logprobs["tokens"])
        if out.text or logprobs or out.finish_reason:
            yield chunk([{"index": index, "text": out.text, "logprobs": logprobs,
                          "finish_reason": out.finish_reason}])
    usage = gen.usage()
    note_tokens(usage.prompt_tokens, usage.completion_tokens)
    if body.include_usage:
        final = chunk([])
        final["usage"] = usage.as_openai()
        yield final
