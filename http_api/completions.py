"""POST /v1/completions: OpenAI (legacy) text completions, JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.serving import ServedModel, collect
from http_api.generation import Submission, merge, read_json, submit, usage
from http_api.logprobs import completion_logprobs
from http_api.protocol import CompletionRequest
from http_api.sse import sse_response, until_disconnected


async def completions(request: Request) -> Response:
    body = CompletionRequest.model_validate(await read_json(request))
    model: ServedModel = request.app.state.slot.require()
    model.check_model_name(body.model)
    prompts = [model.tokenizer.encode(p) if isinstance(p, str) else p for p in body.prompts()]
    sub = submit(model, "cmpl", prompts, body.n, body.sampling_params, body.truncate_sequence)
    if body.stream:
        return sse_response(request, _chunks(sub, body), sub.abort)
    return JSONResponse(await until_disconnected(request, _complete(sub, body), sub.abort))


def _echo(sub: Submission, index: int, body: CompletionRequest) -> str:
    if not body.echo:
        return ""
    return sub.model.tokenizer.decode(sub.streams[index].prompt_token_ids)


async def _complete(sub: Submission, body: CompletionRequest) -> dict[str, Any]:
    choices = []
    prompt_tokens = completion_tokens = 0
    for index, stream in enumerate(sub.streams):
        prefix = _echo(sub, index, body)
        c = await collect(stream)
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(sub.model.tokenizer, c.logprobs, len(prefix))
        choices.append({"index": index, "text": prefix + c.text, "logprobs": logprobs,
                        "finish_reason": c.finish_reason})
        if index % body.n == 0:
            prompt_tokens += c.num_prompt_tokens
        completion_tokens += c.num_output_tokens
    return {"id": sub.id, "object": "text_completion", "created": sub.created,
            "model": sub.model.id, "choices": choices, "system_fingerprint": None,
            "usage": usage(prompt_tokens, completion_tokens)}


async def _chunks(sub: Submission, body: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        c = {"id": sub.id, "object": "text_completion", "created": sub.created,
             "model": sub.model.id, "system_fingerprint": None, "choices": choices}
        if body.include_usage:
            c["usage"] = None
        return c

    offsets = [len(_echo(sub, i, body)) for i in range(len(sub.streams))]
    if body.echo:
        for index in range(len(sub.streams)):
            yield chunk([{"index": index, "text": _echo(sub, index, body), "logprobs": None,
                          "finish_reason": None}])
    prompt_tokens = [0] * len(sub.streams)
    output_tokens = [0] * len(sub.streams)
    async for index, out in merge(sub.streams):
        prompt_tokens[index], output_tokens[index] = out.num_prompt_tokens, out.num_output_tokens
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(sub.model.tokenizer, out.logprobs, offsets[index])
            offsets[index] += sum(len(t) for t in logprobs["tokens"])
        if out.text or logprobs or out.finish_reason:
            yield chunk([{"index": index, "text": out.text, "logprobs": logprobs,
                          "finish_reason": out.finish_reason}])
    if body.include_usage:
        final = chunk([])
        final["usage"] = usage(sum(prompt_tokens[:: body.n]), sum(output_tokens))
        yield final
