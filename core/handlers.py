"""The request handlers both front ends share: chat and text completion on a served model.

A front end parses its own input (OpenAI JSON, MCP tool arguments) into a :class:`ChatRequest`
or :class:`CompletionRequest`, starts it here, and formats the :class:`Generation`'s outputs
its own way. Validation, templating, prompt fitting and the n-choice fan-out live only here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from core.async_engine import RequestStream
from core.chat import normalize_messages
from core.errors import InvalidRequestError
from core.outputs import EngineRequest, RequestOutput
from core.params import SamplingParams
from core.serving import Completion, ServedModel, collect


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion: OpenAI-style messages and how to sample ``n`` replies."""

    messages: list[dict[str, Any]]
    params: SamplingParams
    model: str | None = None
    n: int = 1
    truncate: bool = False
    enable_thinking: bool | None = None
    response_format: dict[str, Any] | None = None
    grammar: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """A text completion of one or more prompts (text or token ids), ``n`` choices each."""

    prompts: list[str | list[int]]
    params: SamplingParams
    model: str | None = None
    n: int = 1
    truncate: bool = False
    grammar: dict[str, Any] | None = None


@dataclass
class Generation:
    """The engine streams of one API request (choice index = prompt index * n + i)."""

    model: ServedModel
    streams: list[RequestStream]
    id: str
    n: int = 1
    created: int = field(default_factory=lambda: int(time.time()))

    def abort(self) -> None:
        for stream in self.streams:
            stream.abort()

    def prompt_text(self, index: int) -> str:
        return self.model.tokenizer.decode(self.streams[index].prompt_token_ids)

    async def collect(self) -> list[Completion]:
        """Every choice gathered whole (aborting all of them if cancelled)."""
        try:
            return list(await asyncio.gather(*(collect(s) for s in self.streams)))
        finally:
            self.abort()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(choice index, output) pairs across all choices, in arrival order."""
        async for item in merge(self.streams):
            yield item


def start_chat(model: ServedModel, request: ChatRequest) -> Generation:
    """Validate, template and submit a chat request; raises InferError before anything runs."""
    model.check_model_name(request.model)
    _check_supported(request.grammar, request.response_format, request.tools,
                     request.tool_choice)
    messages = normalize_messages(request.messages)
    prompt = model.tokenizer.encode_chat(messages, enable_thinking=request.enable_thinking)
    return _submit(model, "chatcmpl", [prompt], request.n, request.params, request.truncate)


def start_completion(model: ServedModel, request: CompletionRequest) -> Generation:
    """Validate, tokenize and submit a text completion request."""
    model.check_model_name(request.model)
    _check_supported(request.grammar)
    prompts = [model.tokenizer.encode(p) if isinstance(p, str) else p for p in request.prompts]
    return _submit(model, "cmpl", prompts, request.n, request.params, request.truncate)


def choice_params(params: SamplingParams, choice: int) -> SamplingParams:
    """Each of the n choices of a seeded request gets its own reproducible seed."""
    return params if params.seed is None or choice == 0 else replace(params,
                                                                     seed=params.seed + choice)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object (both front ends report it in this shape)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _check_supported(grammar: dict[str, Any] | None,
                     response_format: dict[str, Any] | None = None,
                     tools: list[dict[str, Any]] | None = None,
                     tool_choice: str | dict[str, Any] | None = None) -> None:
    """Reject what would change the output's shape and is not implemented yet."""
    if grammar is not None:
        raise InvalidRequestError("'grammar' (constrained decoding) is not supported yet",
                                  param="grammar", code="unsupported_parameter")
    kind = (response_format or {}).get("type", "text")
    if kind != "text":
        raise InvalidRequestError(f"response_format type {kind!r} is not supported yet",
                                  param="response_format", code="unsupported_parameter")
    if tools and tool_choice != "none":
        raise InvalidRequestError("tool calling is not supported yet", param="tools",
                                  code="unsupported_parameter")


def _submit(model: ServedModel, prefix: str, prompts: list[list[int]], n: int,
            params: SamplingParams, truncate: bool) -> Generation:
    rid = f"{prefix}-{uuid.uuid4().hex[:24]}"
    streams: list[RequestStream] = []
    try:
        for p, prompt in enumerate(prompts):
            for i in range(n):
                index = p * n + i
                request = EngineRequest(f"{rid}-{index}", prompt, choice_params(params, i),
                                        truncate)
                streams.append(model.engine.generate(request))
    except BaseException:
        for stream in streams:
            stream.abort()
        raise
    return Generation(model, streams, rid, n)


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several output streams as (index, output) in arrival order."""
    if len(streams) == 1:
        async with streams[0]:
            async for out in streams[0]:
                yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await queue.put((index, out))
            await queue.put((index, None))
        except BaseException as exc:  # handed to the consumer below
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.abort()
