"""The request handlers both front ends share: chat, text completion and embeddings.

A front end parses its own input (OpenAI JSON, MCP tool arguments) into a :class:`ChatRequest`,
:class:`CompletionRequest` or :class:`EmbeddingRequest`, runs it here against the
:class:`ModelRegistry` (which routes its ``model`` field), and formats the result its own way.
Routing, validation, templating, prompt fitting and the n-choice fan-out live only here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.chat.images import check_modalities, has_media, images_of, load_images
from core.chat.messages import normalize_messages
from core.chat.output_parser import ChatDelta, ChatOutputParser, ToolCall
from core.chat.tools import (
    ToolFormat,
    ToolPlan,
    call_grammar,
    plan_tools,
    render_history,
    tool_format,
    tools_system_prompt,
)
from core.engine.async_engine import RequestStream
from core.engine.outputs import EngineRequest, OutputFinishReason, RequestOutput
from core.engine.params import GrammarSpec, SamplingParams
from core.errors import ContextLengthError, InvalidRequestError
from core.models.vision.prompt import MultimodalPrompt
from core.serving.chat_model import Completion, ServedModel, collect
from core.serving.embedding_model import EmbeddingModel
from core.serving.registry import ModelRegistry
from core.serving.telemetry import StreamTimer

MAX_EMBEDDING_INPUTS = 2048


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
    parallel_tool_calls: bool | None = None


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
class ChatChoice:
    """One whole chat choice: text split into content, reasoning and tool calls."""

    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    completion: Completion

    @property
    def finish_reason(self) -> OutputFinishReason | None:
        return "tool_calls" if self.tool_calls else self.completion.finish_reason


@dataclass(frozen=True)
class Usage:
    """The tokens one request read and wrote; ``cached_tokens`` of its prompt tokens came from
    the prefix cache."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens)

    def as_openai(self) -> dict[str, Any]:
        """OpenAI's usage object of chat and text completions (both front ends report it)."""
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass
class Generation:
    """The engine streams of one API request (choice index = prompt index * n + i)."""

    model: ServedModel
    streams: list[RequestStream]
    id: str
    n: int = 1
    parse_tool_calls: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _choices: list[Usage] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._choices = [Usage()] * len(self.streams)

    def usage(self) -> Usage:
        """The tokens of the outputs so far: each prompt once (its n choices share it), every
        choice's completion tokens."""
        prompts = self._choices[:: self.n]
        return Usage(sum(u.prompt_tokens for u in prompts),
                     sum(u.completion_tokens for u in self._choices),
                     sum(u.cached_tokens for u in prompts))

    def _count(self, index: int, out: RequestOutput | Completion) -> None:
        self._choices[index] = Usage(out.num_prompt_tokens, out.num_output_tokens,
                                     out.num_cached_tokens)

    def abort(self) -> None:
        for stream in self.streams:
            stream.abort()

    def prompt_text(self, index: int) -> str:
        return self.model.tokenizer.decode(self.streams[index].prompt_token_ids)

    async def collect(self) -> list[Completion]:
        """Every choice gathered whole (aborting all of them if cancelled)."""
        try:
            completions = list(await asyncio.gather(*(collect(s) for s in self.streams)))
        finally:
            self.abort()
        for index, completion in enumerate(completions):
            self._count(index, completion)
        return completions

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(choice index, output) pairs across all choices, in arrival order."""
        async for index, out in merge(self.streams):
            self._count(index, out)
            yield index, out

    async def chat_deltas(self) -> AsyncIterator[tuple[int, ChatDelta, RequestOutput]]:
        """Chat outputs split into content, reasoning and tool-call deltas; on a choice's last
        output, held-back text is flushed and finish_reason becomes tool_calls if it called."""
        fmt = tool_format(self.model.tokenizer.chat_template)
        parsers = [ChatOutputParser(self.parse_tool_calls, fmt) for _ in self.streams]
        async for index, out in self.outputs():
            parser = parsers[index]
            delta = parser.feed(out.text)
            if out.finished:
                tail = parser.finish()
                delta.content += tail.content
                delta.reasoning += tail.reasoning
                delta.new_calls += tail.new_calls
                delta.arguments += tail.arguments
                if parser.calls:
                    out.finish_reason = "tool_calls"
            yield index, delta, out

    async def collect_chat(self) -> list[ChatChoice]:
        """Every chat choice gathered whole and split like :meth:`chat_deltas`."""
        return [self.as_chat(c) for c in await self.collect()]

    def as_chat(self, completion: Completion) -> ChatChoice:
        """Split one whole choice's text into content, reasoning and tool calls."""
        parser = ChatOutputParser(self.parse_tool_calls,
                                  tool_format(self.model.tokenizer.chat_template))
        head, tail = parser.feed(completion.text), parser.finish()
        return ChatChoice(head.content + tail.content, head.reasoning + tail.reasoning,
                          parser.calls, completion)


@dataclass(frozen=True)
class EmbeddingRequest:
    """Texts or token-id lists to embed; ``truncate`` drops tokens from the end of long ones."""

    inputs: list[str] | list[list[int]]
    model: str | None = None
    truncate: bool = False
    dimensions: int | None = None


@dataclass
class Embeddings:
    """One vector per input, in input order, and the tokens the encoder read."""

    model: EmbeddingModel
    vectors: np.ndarray  # (num_inputs, dim) float32
    num_prompt_tokens: int


async def prepare_chat(models: ModelRegistry, request: ChatRequest) -> ChatRequest:
    """The request with its image parts loaded (decoded, or fetched where the registry's
    :class:`~core.chat.images.ImagePolicy` allows), ready for :func:`start_chat`; both front
    ends await it first. Without media parts it is the request itself. A model that cannot
    read a part, or a full queue, is refused before anything is fetched or decoded."""
    if not has_media(request.messages):
        return request
    model = models.chat_model(request.model)
    model.engine.check_capacity(request.n)
    return replace(request, messages=await load_images(
        request.messages, models.image_policy, model.id, model.input_modalities))


def start_chat(models: ModelRegistry, request: ChatRequest) -> Generation:
    """Route, validate, template and submit a chat request; raises InferError before anything
    runs."""
    model = models.chat_model(request.model)
    model.engine.check_capacity(request.n)  # a full queue answers 429 before any work
    plan = plan_tools(request.tools, request.tool_choice, request.parallel_tool_calls)
    params = _chat_params(request.params, plan, tool_format(model.tokenizer.chat_template),
                          output_grammar(request.grammar,
                                                               request.response_format))
    prompt = chat_prompt(model, request.messages, plan, request.enable_thinking)
    gen = _submit(models, model, "chatcmpl", [prompt], request.n, params, request.truncate)
    gen.parse_tool_calls = plan.mode != "none"
    return gen


def chat_prompt(model: ServedModel, messages: list[dict[str, Any]], plan: ToolPlan,
                enable_thinking: bool | None, add_generation_prompt: bool = True
                ) -> list[int] | MultimodalPrompt:
    """The prompt token ids of ``messages`` under the model's chat template, with the tools of
    ``plan`` (rendered by the template if it knows tools, else as a system-prompt section).
    A media part the model cannot read is a 400 naming its input modalities. Messages with
    images, to a model that reads them: the template's text with one placeholder an image,
    expanded and processed by the model's own processor."""
    check_modalities(messages, model.id, model.input_modalities)
    messages = normalize_messages(messages)
    tokenizer = model.tokenizer
    fmt = tool_format(tokenizer.chat_template)
    tools: list[dict[str, Any]] | None = None
    if tokenizer.supports_tools:
        tools = [t.as_openai() for t in plan.tools] if plan.mode != "none" else None
        if tools and fmt.tools_in_system:  # Phi-4-mini's template: the system message's field
            messages = _with_system_tools(messages, tools)
            tools = None
    else:
        messages = render_history(messages, fmt)
        if plan.mode != "none":
            messages = _with_system_text(messages, tools_system_prompt(plan, fmt))
    pictures = images_of(messages)
    if not pictures or model.prompter is None:
        return tokenizer.encode_chat(messages, tools=tools, enable_thinking=enable_thinking,
                                     add_generation_prompt=add_generation_prompt)
    text = tokenizer.render_chat(template_parts(messages), tools=tools,
                                 enable_thinking=enable_thinking,
                                 add_generation_prompt=add_generation_prompt)
    return model.prompter.prompt(text, pictures)


def template_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as vision chat templates read them: an image part is ``{"type": "image"}``."""
    return [{**m, "content": [{"type": "image"} if p["type"] == "image" else p
                              for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in messages]


def start_completion(models: ModelRegistry, request: CompletionRequest) -> Generation:
    """Route, validate, tokenize and submit a text completion request."""
    model = models.chat_model(request.model)
    model.engine.check_capacity(len(request.prompts) * request.n)
    params = replace(request.params, grammar=output_grammar(request.grammar, None))
    prompts = [model.tokenizer.encode(p) if isinstance(p, str) else p for p in request.prompts]
    return _submit(models, model, "cmpl", prompts, request.n, params, request.truncate)


async def embed(models: ModelRegistry, request: EmbeddingRequest) -> Embeddings:
    """Route, tokenize and check every input, then encode them all through the model's batcher
    (together with whatever other requests are waiting)."""
    model = models.embedding_model(request.model)
    if request.dimensions is not None and request.dimensions != model.dim:
        raise InvalidRequestError(
            f"the model {model.id!r} does not support 'dimensions' (its vectors have {model.dim} "
            "dimensions; Matryoshka truncation is not implemented)", param="dimensions",
            code="unsupported_parameter")
    rows = embedding_rows(model, request)
    vectors = await model.batcher.encode(rows)
    num_tokens = sum(len(row) for row in rows)
    for observer in models.observers:
        observer.on_tokens(model.id, num_tokens, 0)
    return Embeddings(model, vectors, num_tokens)


def embedding_rows(model: EmbeddingModel, request: EmbeddingRequest) -> list[list[int]]:
    """Each input as the token ids the encoder reads (special tokens added, fitted to the
    model's length); a 400 for an empty input, bad token ids or a too-long input or batch."""
    inputs = request.inputs
    if not inputs:
        raise InvalidRequestError("'input' must not be empty", param="input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequestError(f"'input' has {len(inputs)} items; at most "
                                  f"{MAX_EMBEDDING_INPUTS} per request", param="input")
    texts = [(i, x) for i, x in enumerate(inputs) if isinstance(x, str)]
    tokens: list[list[int]] = [x if isinstance(x, list) else [] for x in inputs]
    for (i, _), ids in zip(texts, model.tokenizer.encode_batch([t for _, t in texts]),
                           strict=True):
        tokens[i] = ids
    specials = model.tokenizer.num_special_tokens
    room = model.max_model_len - specials
    vocab = model.tokenizer.vocab_size
    for i, ids in enumerate(tokens):
        if not ids:
            raise InvalidRequestError(f"input[{i}] is empty", param="input")
        if min(ids) < 0 or max(ids) >= vocab:
            raise InvalidRequestError(f"input[{i}]: token ids must be in [0, {vocab})",
                                      param="input")
        if len(ids) > room:
            if not request.truncate:
                raise ContextLengthError(
                    f"input[{i}] has {len(ids) + specials} tokens; this model "
                    f"reads at most {model.max_model_len}. Shorten it or set truncate_sequence "
                    "to true (drops tokens from the end)", param="input")
            tokens[i] = ids[:room]
    return [model.tokenizer.with_special_tokens(ids) for ids in tokens]


def choice_params(params: SamplingParams, choice: int) -> SamplingParams:
    """Each of the n choices of a seeded request gets its own reproducible seed."""
    return params if params.seed is None or choice == 0 else replace(params,
                                                                     seed=params.seed + choice)


def output_grammar(grammar: dict[str, Any] | None,
                   response_format: dict[str, Any] | None) -> GrammarSpec | None:
    """The constraint asked for by ``grammar`` or ``response_format`` (not both)."""
    kind = (response_format or {}).get("type", "text")
    if grammar is not None and kind != "text":
        raise InvalidRequestError("'grammar' and 'response_format' cannot be used together",
                                  param="grammar")
    if grammar is not None:
        if not isinstance(grammar, dict) or "type" not in grammar or "value" not in grammar:
            raise InvalidRequestError("grammar must be {\"type\": ..., \"value\": ...}",
                                      param="grammar")
        return GrammarSpec(str(grammar["type"]), grammar["value"])
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_schema", {"type": "object"})
    if kind == "json_schema":
        spec = (response_format or {}).get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format.json_schema.schema must be an object",
                                      param="response_format")
        return GrammarSpec("json_schema", schema)
    raise InvalidRequestError(f"response_format type {kind!r} is not supported; use text, "
                              "json_object or json_schema", param="response_format")


def _chat_params(params: SamplingParams, plan: ToolPlan, fmt: ToolFormat,
                 output: GrammarSpec | None) -> SamplingParams:
    if plan.mode == "required":
        if output is not None:
            raise InvalidRequestError("a required tool call cannot be combined with 'grammar' or "
                                      "'response_format'", param="tool_choice")
        return replace(params, grammar=call_grammar(plan, fmt))
    if plan.mode == "auto" and output is None:
        # once the model writes the format's marker, the calls that follow are held to the
        # tools (a Llama 3 call written without <|python_tag|> is parsed, not enforced)
        return replace(params, triggered_grammar=(fmt.open, call_grammar(plan, fmt,
                                                                         with_open_tag=False)))
    return replace(params, grammar=output)


def _with_system_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]
                       ) -> list[dict[str, Any]]:
    listing = json.dumps([t["function"] for t in tools])
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "tools": listing}, *messages[1:]]
    return [{"role": "system", "content": "", "tools": listing}, *messages]


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _submit(models: ModelRegistry, model: ServedModel, prefix: str,
            prompts: list[list[int]] | list[list[int] | MultimodalPrompt], n: int,
            params: SamplingParams, truncate: bool) -> Generation:
    rid = f"{prefix}-{uuid.uuid4().hex[:24]}"
    streams: list[RequestStream] = []
    try:
        for p, prompt in enumerate(prompts):
            images = prompt if isinstance(prompt, MultimodalPrompt) else None
            ids = prompt.token_ids if isinstance(prompt, MultimodalPrompt) else prompt
            for i in range(n):
                index = p * n + i
                request = EngineRequest(f"{rid}-{index}", ids, choice_params(params, i),
                                        truncate, images)
                timer = StreamTimer(model.id, models.observers) if models.observers else None
                streams.append(model.engine.generate(request))
                streams[-1].on_output = timer
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
