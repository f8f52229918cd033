"""The MCP tools: the same handlers and model routing as the HTTP API, with progress and
cancellation."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar, cast

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from core.engine.params import (
    COMPLETION_MAX_TOKENS,
    FREQUENCY_PENALTY,
    MAX_TOKENS,
    MIN_P,
    PRESENCE_PENALTY,
    REPETITION_PENALTY,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    Limits,
    N,
    SamplingParams,
)
from core.errors import EngineUnavailableError, InferError
from core.serving import handlers
from core.serving.chat_model import Completion
from core.serving.registry import ModelRegistry
from mcp_server.schemas import (
    Choice,
    EmbeddingResult,
    EmbeddingUsage,
    GenerationResult,
    Health,
    Message,
    ModelList,
    ToolCall,
    Usage,
    model_info,
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _limits(limits: Limits[Any], description: str | None = None) -> Any:
    """The bounds of one field of the engine's sampling spec, as a pydantic Field."""
    return Field(ge=limits.ge, gt=limits.gt, le=limits.le, description=description)


Temperature = Annotated[float, _limits(TEMPERATURE, "0 = greedy; default 1")]
TopP = Annotated[float, _limits(TOP_P, "nucleus sampling mass")]
TopK = Annotated[int, _limits(TOP_K, "0 or -1 = off")]
MinP = Annotated[float, _limits(MIN_P)]
PresencePenalty = Annotated[float, _limits(PRESENCE_PENALTY)]
FrequencyPenalty = Annotated[float, _limits(FREQUENCY_PENALTY)]
RepetitionPenalty = Annotated[float, _limits(REPETITION_PENALTY)]
MaxTokens = Annotated[int, _limits(MAX_TOKENS, "the most tokens to generate")]
Choices = Annotated[int, _limits(N)]
Stop = Annotated[list[str] | str | None, Field(description="stop strings (never returned)")]
# Emptiness is declared in the schema but checked by the shared handlers, so the tool error
# carries the HTTP API's message ("'messages' must contain at least one message").
Messages = Annotated[list[Message], Field(json_schema_extra={"minItems": 1})]
Prompt = Annotated[str, Field(json_schema_extra={"minLength": 1},
                              description="the text to continue")]


# how long a tool call or resource read that arrives while the models load waits for them
# (Claude Desktop and agents call right after connecting); progress says they are loading
LOAD_WAIT_S = 600.0
LOAD_REPORT_S = 1.0


async def wait_for_models(models: ModelRegistry, message: str, ctx: Context | None = None,
                          timeout: float | None = None) -> bool:
    """Wait (bounded) until the models have loaded or failed, reporting ``message`` as
    progress once a second to a caller that asked for progress; whether they settled."""
    start, timeout = time.monotonic(), LOAD_WAIT_S if timeout is None else timeout
    while not models.settled.is_set():
        waited = time.monotonic() - start
        if waited >= timeout:
            return False
        if ctx is not None:
            with contextlib.suppress(Exception):  # a client that went away: go on waiting
                await ctx.report_progress(waited, None, message)
        await anyio.sleep(min(LOAD_REPORT_S, timeout - waited))
    return True


def reports_errors(fn: F) -> F:
    """Turn engine errors into tool errors (``isError`` results with the HTTP API's message);
    a call that arrives while the models load waits for them, then runs."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                return await fn(self, *args, **kwargs)
            except EngineUnavailableError as exc:
                if exc.code != "model_loading" or not await wait_for_models(
                        self.models, exc.message, kwargs.get("ctx")):
                    raise ToolError(exc.message) from exc
            except InferError as exc:
                raise ToolError(exc.message) from exc

    return cast(F, wrapper)


class Tools:
    """The tool functions; each docstring is the description the calling model reads."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    @reports_errors
    async def chat(
        self,
        messages: Messages,
        ctx: Context,
        max_tokens: MaxTokens | None = None,
        temperature: Temperature | None = None,
        model: str = "default",
        top_p: TopP | None = None,
        top_k: TopK | None = None,
        min_p: MinP | None = None,
        stop: Stop = None,
        seed: int | None = None,
        presence_penalty: PresencePenalty | None = None,
        frequency_penalty: FrequencyPenalty | None = None,
        repetition_penalty: RepetitionPenalty | None = None,
        response_format: dict[str, Any] | None = None,
        grammar: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        enable_thinking: bool = False,
        truncate_sequence: bool = False,
        n: Choices = N.default,
    ) -> Annotated[CallToolResult, GenerationResult]:
        """Generate an assistant reply to a conversation with the served language model.

        Give `messages` as a list of {role, content} (roles: system, user, assistant). Returns
        the reply text, why it stopped (stop or length) and token usage. A user message's
        content may be a list of MCP content, {"type": "text", "text"} and {"type": "image",
        "data": <base64>, "mimeType": "image/png"} (PNG, JPEG, WebP or GIF), for a model that
        reads images (another answers with an error naming what it reads). Optional fields match
        the OpenAI chat completions API: max_tokens, temperature (0 = deterministic), top_p,
        top_k, min_p, stop, seed, penalties, n. Set truncate_sequence to drop the oldest prompt
        tokens instead of failing when the conversation is longer than the context.

        Structured output is enforced while sampling: response_format {"type": "json_object"}
        or {"type": "json_schema", "json_schema": {"schema": {...}}}, or grammar {"type":
        "regex" | "lark" | "json_schema" | "llguidance", "value": ...}. Function tools
        (OpenAI format) with tool_choice none | auto | required | {"type": "function",
        "function": {"name": ...}} return tool_calls whose arguments match their schemas.
        """
        params = SamplingParams.from_optional(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            min_p=min_p, stop=stop, seed=seed, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, repetition_penalty=repetition_penalty)
        request = handlers.ChatRequest(
            messages=[m.as_chat() for m in messages], params=params, model=model, n=n,
            truncate=truncate_sequence, enable_thinking=enable_thinking,
            response_format=response_format, grammar=grammar, tools=tools,
            tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
        request = await handlers.prepare_chat(self.models, request)
        gen = handlers.start_chat(self.models, request)
        return await _run(gen, ctx, max_tokens, chat=True)

    @reports_errors
    async def complete(
        self,
        prompt: Prompt,
        ctx: Context,
        max_tokens: MaxTokens = COMPLETION_MAX_TOKENS,
        temperature: Temperature | None = None,
        model: str = "default",
        top_p: TopP | None = None,
        top_k: TopK | None = None,
        min_p: MinP | None = None,
        stop: Stop = None,
        seed: int | None = None,
        presence_penalty: PresencePenalty | None = None,
        frequency_penalty: FrequencyPenalty | None = None,
        repetition_penalty: RepetitionPenalty | None = None,
        grammar: dict[str, Any] | None = None,
        truncate_sequence: bool = False,
        n: Choices = N.default,
    ) -> Annotated[CallToolResult, GenerationResult]:
        """Continue a piece of text with the served language model (raw text completion, no chat
        template). Returns the continuation, why it stopped and token usage. Sampling fields as
        in the OpenAI completions API; max_tokens defaults to 16."""
        params = SamplingParams.from_optional(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            min_p=min_p, stop=stop, seed=seed, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, repetition_penalty=repetition_penalty)
        request = handlers.CompletionRequest(prompts=[prompt], params=params, model=model, n=n,
                                             truncate=truncate_sequence, grammar=grammar)
        gen = handlers.start_completion(self.models, request)
        return await _run(gen, ctx, max_tokens, chat=False)

    @reports_errors
    async def embed(
        self,
        input: Annotated[str | list[str], Field(
            description="a text, or a list of texts to embed in one call")],
        ctx: Context,
        model: str = "default",
        truncate_sequence: bool = False,
    ) -> Annotated[CallToolResult, EmbeddingResult]:
        """Turn text into embedding vectors with the served embedding model (for semantic
        search, clustering, deduplication). Give `input` as one string or a list of strings;
        returns one vector per input, in order, plus token usage. Vectors of a model that
        normalizes them (the default all-MiniLM-L6-v2 does) have length 1, so their dot
        product is the cosine similarity. An input longer than the model's context is an error
        unless truncate_sequence is true, which drops tokens from its end."""
        inputs = [input] if isinstance(input, str) else list(input)
        result = await handlers.embed(self.models, handlers.EmbeddingRequest(
            inputs=inputs, model=model, truncate=truncate_sequence))
        vectors = result.vectors.tolist()
        usage = EmbeddingUsage(prompt_tokens=result.num_prompt_tokens,
                               total_tokens=result.num_prompt_tokens)
        structured = EmbeddingResult(embeddings=vectors, model=result.model.id,
                                     dimensions=result.model.dim, usage=usage)
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(vectors))],
                              structured_content=structured.model_dump(mode="json"))

    @reports_errors
    async def list_models(self, ctx: Context) -> ModelList:
        """List the models this server serves: id, kind (chat or embedding), context length,
        dtype, capabilities and aliases. Pass an id or alias as `model` to chat, complete or
        embed, or "default" for the default model of that kind."""
        return ModelList(models=[model_info(card) for card in self.models.cards()])

    @reports_errors
    async def health(self) -> Health:
        """Report whether the server is ready (ok), still loading, or failed, and each model's
        status and load."""
        return Health(**self.models.health()[1])


async def _run(gen: handlers.Generation, ctx: Context, max_tokens: int | None,
               chat: bool) -> CallToolResult:
    """Stream the generation, reporting progress; a cancelled call aborts it at once."""
    results = [Completion() for _ in gen.streams]
    total = (max_tokens or gen.model.max_model_len) * len(gen.streams)
    async for index, out in gen.outputs():
        c = results[index]
        c.text += out.text
        c.finish_reason = out.finish_reason
        await ctx.report_progress(gen.usage().completion_tokens, total, out.text or None)
    return _result(gen, results, chat)


def _result(gen: handlers.Generation, results: list[Completion], chat: bool) -> CallToolResult:
    parsed = [gen.as_chat(r) for r in results] if chat else None
    choices = [Choice(index=i, text=parsed[i].content if parsed else r.text,
                      finish_reason=parsed[i].finish_reason if parsed else r.finish_reason)
               for i, r in enumerate(results)]
    first = parsed[0] if parsed else None
    result = GenerationResult(
        text=choices[0].text, finish_reason=choices[0].finish_reason,
        usage=Usage(**gen.usage().as_openai()), model=gen.model.id, choices=choices,
        tool_calls=[ToolCall(id=c.id, name=c.name, arguments=c.arguments)
                    for c in (first.tool_calls if first else [])],
        reasoning=(first.reasoning or None) if first else None)
    text = choices[0].text if len(choices) == 1 else json.dumps([c.text for c in choices])
    if result.tool_calls:
        text = json.dumps([c.model_dump() for c in result.tool_calls])
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=result.model_dump(mode="json"))
