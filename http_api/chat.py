"""POST /v1/chat/completions: OpenAI chat completions, JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.chat import normalize_messages
from core.serving import ServedModel, collect
from http_api.generation import Submission, merge, read_json, submit, usage
from http_api.logprobs import chat_logprobs
from http_api.protocol import ChatCompletionRequest
from http_api.sse import sse_response, until_disconnected


async def chat_completions(request: Request) -> Response:
    body = ChatCompletionRequest.model_validate(await read_json(request))
    model: ServedModel = request.app.state.slot.require()
    model.check_model_name(body.model)
    messages = normalize_messages(body.message_dicts())
    prompt = model.tokenizer.encode_chat(messages, enable_thinking=body.enable_thinking)
    sub = submit(model, "chatcmpl", [prompt], body.n, body.sampling_params,
                 body.truncate_sequence)
    if body.stream:
        return sse_response(request, _chunks(sub, body), sub.abort)
    return JSONResponse(await until_disconnected(request, _complete(sub, body), sub.abort))


async def _complete(sub: Submission, body: ChatCompletionRequest) -> dict[str, Any]:
    choices = []
    completions = [await collect(s) for s in sub.streams]
    for index, c in enumerate(completions):
        choices.append({
            "index": index,
            "message": {"role": "assistant", "content": c.text, "refusal": None},
            "logprobs": chat_logprobs(sub.model.tokenizer, c.logprobs) if body.logprobs else None,
            "finish_reason": c.finish_reason,
        })
    completion_tokens = sum(c.num_output_tokens for c in completions)
    return {
        "id": sub.id, "object": "chat.completion", "created": sub.created, "model": sub.model.id,
        "choices": choices, "system_fingerprint": None,
        "usage": usage(completions[0].num_prompt_tokens, completion_tokens),
    }


async def _chunks(sub: Submission, body: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
    include_usage = body.include_usage

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        c = {"id": sub.id, "object": "chat.completion.chunk", "created": sub.created,
             "model": sub.model.id, "system_fingerprint": None, "choices": choices}
        if include_usage:
            c["usage"] = None
        return c

    for index in range(len(sub.streams)):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    prompt_tokens, output_tokens = 0, [0] * len(sub.streams)
    async for index, out in merge(sub.streams):
        prompt_tokens, output_tokens[index] = out.num_prompt_tokens, out.num_output_tokens
        logprobs = chat_logprobs(sub.model.tokenizer, out.logprobs) if body.logprobs else None
        if out.text or logprobs:
            yield chunk([{"index": index, "delta": {"content": out.text}, "logprobs": logprobs,
                          "finish_reason": None}])
        if out.finish_reason is not None:
            yield chunk([{"index": index, "delta": {}, "logprobs": None,
                          "finish_reason": out.finish_reason}])
    if include_usage:
        final = chunk([])
        final["usage"] = usage(prompt_tokens, sum(output_tokens))
        yield final
