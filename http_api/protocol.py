"""OpenAI wire models for chat, text completions, embeddings and responses; they validate and
become engine requests.

Unknown fields are ignored. Fields that would change the shape of the output and are not
supported (yet) are rejected with 400 instead of being silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from core import handlers, responses
from core.errors import InvalidRequestError
from core.params import MAX_TOP_LOGPROBS, SamplingParams

MAX_N = 16


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _GenerationRequest(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = "default"
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: StrictBool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    truncate_sequence: StrictBool = False
    user: str | None = None
    grammar: dict[str, Any] | None = None

    def _sampling(self, max_tokens: int | None, logprobs: bool, top_logprobs: int
                  ) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=_logit_bias(self.logit_bias),
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=tuple(stop),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    enable_thinking: StrictBool = False
    modalities: list[str] | None = None
    functions: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("'top_logprobs' requires 'logprobs' to be true",
                                      param="top_logprobs")
        if self.functions:
            raise InvalidRequestError("'functions' is not supported", param="functions",
                                      code="unsupported_parameter")
        if self.modalities and set(self.modalities) != {"text"}:
            raise InvalidRequestError("only the text modality is supported", param="modalities",
                                      code="unsupported_parameter")
        return self

    def sampling_params(self) -> SamplingParams:
        max_tokens = self.max_completion_tokens or self.max_tokens
        return self._sampling(max_tokens, self.logprobs, self.top_logprobs or 0)

    def to_request(self) -> handlers.ChatRequest:
        return handlers.ChatRequest(
            messages=[m.model_dump(exclude_none=True) for m in self.messages],
            params=self.sampling_params(), model=self.model, n=self.n,
            truncate=self.truncate_sequence, enable_thinking=self.enable_thinking,
            response_format=self.response_format, grammar=self.grammar, tools=self.tools,
            tool_choice=self.tool_choice, parallel_tool_calls=self.parallel_tool_calls)


# Also accepts a batch mixing strings and token-id lists, which some clients send.
Prompt = str | list[int] | list[str | list[int]]


class CompletionRequest(_GenerationRequest):
    """POST /v1/completions."""

    prompt: Prompt
    echo: StrictBool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = 16

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.suffix:
            raise InvalidRequestError("'suffix' (insertion) is not supported", param="suffix",
                                      code="unsupported_parameter")
        if self.best_of is not None and self.best_of > 1:
            raise InvalidRequestError("'best_of' > 1 is not supported", param="best_of",
                                      code="unsupported_parameter")
        if self.echo and self.logprobs is not None:
            raise InvalidRequestError("'echo' together with 'logprobs' is not supported",
                                      param="echo", code="unsupported_parameter")
        if isinstance(self.prompt, list) and not self.prompt:
            raise InvalidRequestError("'prompt' must not be empty", param="prompt")
        return self

    def sampling_params(self) -> SamplingParams:
        return self._sampling(self.max_tokens, self.logprobs is not None, self.logprobs or 0)

    def to_request(self) -> handlers.CompletionRequest:
        return handlers.CompletionRequest(
            prompts=self.prompts(), params=self.sampling_params(), model=self.model, n=self.n,
            truncate=self.truncate_sequence, grammar=self.grammar)

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [[int(x) for x in p]]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class EmbeddingCreateRequest(BaseModel):
    """POST /v1/embeddings."""

    model_config = ConfigDict(extra="ignore")

    model: str = "default"
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    truncate_sequence: StrictBool = False
    user: str | None = None

    def to_request(self) -> handlers.EmbeddingRequest:
        return handlers.EmbeddingRequest(inputs=self.inputs(), model=self.model,
                                         truncate=self.truncate_sequence,
                                         dimensions=self.dimensions)

    def inputs(self) -> list[str] | list[list[int]]:
        """The batch: strings, or token-id lists (one flat id list is one input)."""
        x = self.input
        if isinstance(x, str):
            return [x]
        if x and all(isinstance(i, int) for i in x):
            return [[int(i) for i in x]]  # type: ignore[arg-type]
        return list(x)  # type: ignore[return-value]


MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponseCreateRequest(BaseModel):
    """POST /v1/responses. ``top_k``, ``min_p`` and the penalties are extensions, as in chat."""

    model_config = ConfigDict(extra="ignore")

    model: str = "default"
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: StrictBool = True
    stream: StrictBool = False
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    metadata: dict[str, StrictStr] | None = None
    user: str | None = None
    background: StrictBool = False
    top_logprobs: Annotated[int, Field(ge=0)] | None = None
    conversation: Any = None
    prompt: Any = None

    @model_validator(mode="after")
    def _supported(self) -> ResponseCreateRequest:
        for name in ("background", "conversation", "prompt", "top_logprobs"):
            if getattr(self, name):
                raise InvalidRequestError(f"'{name}' is not supported", param=name,
                                          code="unsupported_parameter")
        _check_metadata(self.metadata)
        return self

    def sampling_params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=max(0, self.top_k or 0),
            min_p=self.min_p or 0.0, presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0, seed=self.seed,
            max_tokens=self.max_output_tokens, stop=tuple(stop))

    def to_request(self) -> responses.ResponseRequest:
        return responses.ResponseRequest(
            input=self.input, params=self.sampling_params(), model=self.model,
            instructions=self.instructions, previous_response_id=self.previous_response_id,
            store=self.store, text_format=self.text.format if self.text else None,
            tools=self.tools, tool_choice=self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls, truncation=self.truncation,
            metadata=self.metadata, user=self.user)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, values up to 512."""
    items = (metadata or {}).items()
    if len(items) > MAX_METADATA_KEYS or any(len(k) > MAX_METADATA_KEY
                                             or len(v) > MAX_METADATA_VALUE for k, v in items):
        raise InvalidRequestError(f"metadata: at most {MAX_METADATA_KEYS} pairs, keys up to "
                                  f"{MAX_METADATA_KEY} characters, values up to "
                                  f"{MAX_METADATA_VALUE}", param="metadata")


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    items = []
    for key, value in (bias or {}).items():
        try:
            items.append((int(key), float(value)))
        except ValueError:
            raise InvalidRequestError(f"logit_bias key {key!r} is not a token id",
                                      param="logit_bias") from None
    return tuple(items)
