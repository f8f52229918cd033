"""OpenAI wire models for chat, text completions, embeddings and responses; they validate and
become engine requests.

Unknown fields are ignored. Fields that would change the shape of the output and are not
supported (yet) are rejected with 400 instead of being silently dropped. Validation is strict:
a value of the wrong JSON type is a 400, never coerced (``"5"`` or ``true`` for an integer, a
number for a string); ``4.0`` is an integer (:mod:`http_api.body` reads it as ``4``).
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

from core.engine.params import (
    COMPLETION_MAX_TOKENS,
    FREQUENCY_PENALTY,
    LOGIT_BIAS,
    MAX_TOKENS,
    MIN_P,
    MIN_TOKENS,
    PRESENCE_PENALTY,
    REPETITION_PENALTY,
    TEMPERATURE,
    TOP_K,
    TOP_LOGPROBS,
    TOP_P,
    Limits,
    N,
    SamplingParams,
)
from core.errors import InvalidRequestError
from core.responses import handler as responses
from core.serving import handlers, tokenize

# Field docstrings are the field descriptions of the OpenAPI document (/openapi.json).
DOCUMENTED = ConfigDict(extra="ignore", use_attribute_docstrings=True, strict=True)


def _limits(limits: Limits[Any]) -> Any:
    """The bounds of one field of the engine's sampling spec, as a pydantic Field."""
    return Field(ge=limits.ge, gt=limits.gt, le=limits.le)


# the request fields the shared sampling spec bounds
Choices = Annotated[int, _limits(N)]
MaxTokens = Annotated[int, _limits(MAX_TOKENS)]
Temperature = Annotated[float, _limits(TEMPERATURE)]
TopP = Annotated[float, _limits(TOP_P)]
TopK = Annotated[int, _limits(TOP_K)]
MinP = Annotated[float, _limits(MIN_P)]
PresencePenalty = Annotated[float, _limits(PRESENCE_PENALTY)]
FrequencyPenalty = Annotated[float, _limits(FREQUENCY_PENALTY)]
RepetitionPenalty = Annotated[float, _limits(REPETITION_PENALTY)]
LogitBias = Annotated[float, _limits(LOGIT_BIAS)]
MinTokens = Annotated[int, _limits(MIN_TOKENS)]
TopLogprobs = Annotated[int, _limits(TOP_LOGPROBS)]


def _with_example(example: dict[str, Any]) -> ConfigDict:
    """DOCUMENTED plus the example body /docs offers in "Try it out"."""
    return ConfigDict(extra="ignore", use_attribute_docstrings=True, strict=True,
                      json_schema_extra={"examples": [example]})


class StreamOptions(BaseModel):
    model_config = DOCUMENTED

    include_usage: StrictBool = False
    """Send one last chunk with `usage` (and `choices: []`); every other chunk then carries
    `usage: null`."""


class _GenerationRequest(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = DOCUMENTED

    model: str = "default"
    """A served model's id or alias, or `default` (the default chat model)."""
    stream: StrictBool = False
    """Stream the result as server-sent events (`text/event-stream`), ending with
    `data: [DONE]`."""
    stream_options: StreamOptions | None = None
    """Streaming options (only with `stream: true`)."""
    n: Choices = N.default
    """How many choices to generate for each prompt."""
    max_tokens: MaxTokens | None = None
    """The most tokens to generate (default: until the context is full)."""
    temperature: Temperature | None = None
    """Sampling temperature; 0 is greedy decoding (default 1)."""
    top_p: TopP | None = None
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: TopK | None = None
    """Extension: keep only the k most likely tokens (0 or -1: off)."""
    min_p: MinP | None = None
    """Extension: drop tokens whose probability is below min_p times the top token's."""
    presence_penalty: PresencePenalty | None = None
    """Penalize tokens that already appeared (OpenAI semantics)."""
    frequency_penalty: FrequencyPenalty | None = None
    """Penalize tokens by how often they already appeared (OpenAI semantics)."""
    repetition_penalty: RepetitionPenalty | None = None
    """Extension: divide the logits of tokens already seen by this (> 1 discourages
    repeats)."""
    logit_bias: dict[str, LogitBias] | None = None
    """Token id (as a string) -> bias added to its logit, in [-100, 100]."""
    seed: int | None = None
    """Seed for reproducible sampling (each of the n choices gets seed + index)."""
    stop: str | list[str] | None = None
    """Strings that end generation; they are not part of the returned text."""
    stop_token_ids: list[int] | None = None
    """Extension: token ids that end generation."""
    ignore_eos: StrictBool = False
    """Extension: keep generating past the end-of-sequence token."""
    min_tokens: MinTokens = MIN_TOKENS.default
    """Extension: generate at least this many tokens before any stop applies."""
    truncate_sequence: StrictBool = False
    """Extension: an over-long prompt is a 400 `context_length_exceeded` unless this is true;
    then its oldest tokens are dropped, keeping room for max_tokens (or 1)."""
    user: str | None = None
    """An end-user id (accepted and ignored)."""
    grammar: dict[str, Any] | None = None
    """Extension: constrain the output to a grammar, `{"type": "regex" | "lark" |
    "json_schema" | "llguidance", "value": ...}`; exclusive with a non-text response_format.
    An invalid grammar is a 400."""

    def _sampling(self, max_tokens: int | None, logprobs: bool, top_logprobs: int
                  ) -> SamplingParams:
        return SamplingParams.from_optional(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, logit_bias=_logit_bias(self.logit_bias),
            seed=self.seed, max_tokens=max_tokens, min_tokens=self.min_tokens, stop=self.stop,
            stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos, logprobs=logprobs,
            top_logprobs=top_logprobs)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, strict=True)

    role: str
    """`system`, `developer`, `user`, `assistant` or `tool`."""
    content: str | list[dict[str, Any]] | None = None
    """The text, or an array of `{"type": "text", "text": ...}` parts and, in user messages
    to a model that reads images, `{"type": "image_url", "image_url": {"url": ..., "detail":
    "auto" | "low" | "high"}}` parts (a base64 `data:` URI of a PNG, JPEG, WebP or GIF image,
    or an http(s) URL the server's `--allow-image-urls` permits)."""
    name: str | None = None
    """An optional name of the author."""
    tool_calls: list[dict[str, Any]] | None = None
    """The tool calls an assistant message made (OpenAI's shape)."""
    tool_call_id: str | None = None
    """The call a `tool` message answers."""


class ChatCompletionRequest(_GenerationRequest):
    """POST /v1/chat/completions."""

    model_config = _with_example({"model": "default", "max_tokens": 32, "messages": [
        {"role": "user", "content": "Name three colours."}]})

    messages: list[ChatMessage]
    """The conversation so far (at least one message)."""
    max_completion_tokens: MaxTokens | None = None
    """The most tokens to generate (takes precedence over max_tokens)."""
    logprobs: StrictBool = False
    """Return the log-probability of each generated token."""
    top_logprobs: TopLogprobs | None = None
    """How many most likely alternatives to return per token (needs logprobs)."""
    response_format: dict[str, Any] | None = None
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
    "json_schema": {"name", "schema", "strict"}}`; enforced while sampling."""
    tools: list[dict[str, Any]] | None = None
    """Function tools the model may call (`{"type": "function", "function": {"name",
    "description", "parameters"}}`, or the flat form)."""
    tool_choice: str | dict[str, Any] | None = None
    """`none`, `auto`, `required`, `{"type": "function", "function": {"name"}}` or
    `{"type": "allowed_tools", ...}`."""
    parallel_tool_calls: StrictBool | None = None
    """Whether the model may make several tool calls in one reply."""
    enable_thinking: StrictBool = False
    """Extension: passed to the chat template; a leading `<think>...</think>` goes to
    `reasoning_content`."""
    mcp_servers: list[str | dict[str, Any]] | None = None
    """Extension: MCP servers of `--mcp-config` (by label, or `{"server_label",
    "allowed_tools"}`) whose tools the server calls for the model, in a loop, before it
    answers; the calls it ran come back in `mcp_calls`. Client-side `tools` work beside them."""
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    """Extension, with `mcp_servers`: the most MCP calls the server runs (default 8)."""
    modalities: list[str] | None = None
    """Only `["text"]` is supported."""
    functions: list[dict[str, Any]] | None = None
    """Deprecated by OpenAI; not supported (a 400). Use tools."""

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

    model_config = _with_example({"model": "default", "prompt": "The capital of France is",
                                  "max_tokens": 8})

    prompt: Prompt
    """A string, an array of strings, an array of token ids, or an array of token-id
    arrays."""
    echo: StrictBool = False
    """Return the prompt before the completion."""
    logprobs: TopLogprobs | None = None
    """Return the log-probabilities of each token and of this many alternatives."""
    suffix: str | None = None
    """Insertion is not supported (a non-empty suffix is a 400)."""
    best_of: Annotated[int, Field(ge=1)] | None = None
    """Only 1 is supported."""
    max_tokens: MaxTokens | None = COMPLETION_MAX_TOKENS
    """The most tokens to generate (default 16, as OpenAI's)."""

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

    model_config = _with_example({"model": "default",
                                  "input": ["How do I reset my password?"]})

    model: str = "default"
    """A served embedding model's id or alias, or `default`."""
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    """A string, an array of strings, an array of token ids, or an array of token-id arrays
    (at most 2048 inputs)."""
    encoding_format: Literal["float", "base64"] = "float"
    """`float`, or `base64` of the little-endian float32 bytes."""
    dimensions: Annotated[int, Field(ge=1)] | None = None
    """Accepted only when equal to the model's own size (no Matryoshka truncation)."""
    truncate_sequence: StrictBool = False
    """Extension: an input longer than the model's context is a 400 unless this is true;
    then tokens are dropped from the end."""
    user: str | None = None
    """An end-user id (accepted and ignored)."""

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


class ReIsqRequest(BaseModel):
    """POST /re_isq: re-quantize a loaded chat model's weights in place (requests in flight
    pause for the swap; none fail)."""

    model_config = _with_example({"ggml_type": "q8_0"})

    ggml_type: StrictStr
    """Extension: auto (the start-up default: a GGUF's own format, else f16 on x86 CPUs, else
    none), f16 (fp16, half), int8 (8, q8_0, q8_1, q8k), int5 (5, q5_0, q5_1, q5k), int4 (4,
    q4_0, q4_1, q4k), bf16, or none (f32, the checkpoint's full precision); case-insensitive."""
    model: str = "default"
    """The chat model to re-quantize: its id, an alias, or `default`."""


class TokenizeRequest(BaseModel):
    """POST /tokenize: a prompt, or chat messages rendered by the chat template (not both)."""

    model_config = _with_example({"model": "default",
                                  "messages": [{"role": "user", "content": "Hi"}]})

    model: str = "default"
    """A served model's id or alias (chat or embedding), or `default` (the default chat
    model)."""
    prompt: str | None = None
    """Text to tokenize as a completion prompt is."""
    messages: list[ChatMessage] | None = None
    """Chat messages, rendered with the chat template as a chat request renders them."""
    add_special_tokens: StrictBool = True
    """With prompt: add the special tokens a completion request adds (a BOS token, say)."""
    add_generation_prompt: StrictBool = True
    """With messages: end with the template's assistant header, as a chat request does."""
    enable_thinking: StrictBool = False
    """With messages: passed to the chat template, as in a chat request."""
    tools: list[dict[str, Any]] | None = None
    """With messages: the tools a chat request would send (they are part of the prompt)."""

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("send exactly one of 'prompt' and 'messages'",
                                      param="prompt")
        return self

    def to_request(self) -> tokenize.TokenizeRequest:
        messages = None
        if self.messages is not None:
            messages = [m.model_dump(exclude_none=True) for m in self.messages]
        return tokenize.TokenizeRequest(
            model=self.model, prompt=self.prompt, messages=messages,
            add_special_tokens=self.add_special_tokens,
            add_generation_prompt=self.add_generation_prompt,
            enable_thinking=self.enable_thinking, tools=self.tools)


class DetokenizeRequest(BaseModel):
    """POST /detokenize: token ids back to text (special tokens kept)."""

    model_config = _with_example({"model": "default", "tokens": [19556, 905]})

    model: str = "default"
    """A served model's id or alias, or `default`."""
    tokens: list[StrictInt]
    """Token ids of the model's vocabulary."""


MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponseCreateRequest(BaseModel):
    """POST /v1/responses. ``top_k``, ``min_p`` and the penalties are extensions, as in chat."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = "default"
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: StrictBool = True
    stream: StrictBool = False
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    presence_penalty: PresencePenalty | None = None
    frequency_penalty: FrequencyPenalty | None = None
    repetition_penalty: RepetitionPenalty | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
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
        return SamplingParams.from_optional(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, seed=self.seed,
            max_tokens=self.max_output_tokens, stop=self.stop)

    def to_request(self) -> responses.ResponseRequest:
        return responses.ResponseRequest(
            input=self.input, params=self.sampling_params(), model=self.model,
            instructions=self.instructions, previous_response_id=self.previous_response_id,
            store=self.store, text_format=self.text.format if self.text else None,
            tools=self.tools, tool_choice=self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls, truncation=self.truncation,
            metadata=self.metadata, user=self.user, max_tool_calls=self.max_tool_calls)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, values up to 512."""
    items = (metadata or {}).items()
    if len(items) > MAX_METADATA_KEYS or any(len(k) > MAX_METADATA_KEY
                                             or len(v) > MAX_METADATA_VALUE for k, v in items):
        raise InvalidRequestError(f"metadata: at most {MAX_METADATA_KEYS} pairs, keys up to "
                                  f"{MAX_METADATA_KEY} characters, values up to "
                                  f"{MAX_METADATA_VALUE}", param="metadata")


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """JSON object keys are strings: token ids as decimal strings."""
    items = {}
    for key, value in (bias or {}).items():
        try:
            items[int(key)] = float(value)
        except ValueError:
            raise InvalidRequestError(f"logit_bias key {key!r} is not a token id",
                                      param="logit_bias") from None
    return items
