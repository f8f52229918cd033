"""Pydantic models of what the HTTP API answers: the 200 bodies, the SSE chunks, the error
envelope.

The routes build their answers as plain dicts (cheaper on the hot path); these models describe
them for the OpenAPI document (``/openapi.json``), and tests validate real answers against them,
so a drift between the two fails a test. Request models live in :mod:`http_api.protocol`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

DOCUMENTED = ConfigDict(use_attribute_docstrings=True)
OPEN = ConfigDict(use_attribute_docstrings=True, extra="allow")
FinishReason = Literal["stop", "length", "tool_calls"]


class ErrorDetail(BaseModel):
    model_config = DOCUMENTED

    message: str
    """What went wrong, for a person."""
    type: str
    """`invalid_request_error`, `authentication_error`, `not_found_error`,
    `rate_limit_exceeded` or `server_error`."""
    param: str | None
    """The request field at fault, if one is."""
    code: str | None
    """A machine-readable reason: `model_not_found`, `context_length_exceeded`,
    `model_not_supported`, `unsupported_parameter`, `invalid_api_key`, `model_loading`, ..."""


class ErrorResponse(BaseModel):
    """OpenAI's error envelope; every error of this server has this shape."""

    error: ErrorDetail


class PromptTokensDetails(BaseModel):
    """``cached_tokens``: prompt tokens read from the prefix cache instead of computed."""

    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCall(BaseModel):
    name: str
    arguments: str
    """The arguments as a JSON string (they always parse and validate against the tool's
    parameters)."""


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    model_config = DOCUMENTED

    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    reasoning_content: str | None = None
    """Extension: the text of a leading `<think>...</think>` block (see enable_thinking)."""
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletion(BaseModel):
    """A whole chat completion (`stream: false`)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    system_fingerprint: str | None = None
    usage: Usage


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    model_config = DOCUMENTED

    index: int
    """Which call of the choice this fragment belongs to."""
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a chat stream. The first delta of a choice carries
    `role: "assistant"`, exactly one chunk per choice a `finish_reason`; with
    `stream_options.include_usage` a last chunk has `choices: []` and `usage`. A failure
    mid-way is an `{"error": ...}` event (ErrorResponse). The stream ends with
    `data: [DONE]`; `: keep-alive` comment lines may come while waiting."""

    model_config = DOCUMENTED

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    """Only in the last chunk, with stream_options.include_usage."""


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    """A whole text completion (`stream: false`)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: Usage


class CompletionChunk(BaseModel):
    """One `data:` event of a completion stream (then `data: [DONE]`); with
    `stream_options.include_usage` a last chunk has `choices: []` and `usage`."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    model_config = DOCUMENTED

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str
    """Floats, or base64 of little-endian float32 bytes (encoding_format: base64)."""


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """One vector per input, in input order."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    """A served model: OpenAI's model object plus this server's details."""

    model_config = OPEN

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int
    """The context length in tokens."""
    dtype: str
    kind: Literal["chat", "embedding"]
    capabilities: list[str]
    aliases: list[str] = []
    dimensions: int | None = None
    """Embedding models: the vector size."""
    quantization: str | None = None
    """Chat models: the weights' format (f16, int8, int5, int4, bf16 or none); see POST
    /re_isq."""
    weight_bytes: int | None = None
    """Chat models: the memory the weights take."""
    architecture: str | None = None
    """Chat models: the checkpoint's model type (llama, mistral, qwen2, qwen3)."""
    kv_cache_dtype: str | None = None
    """Chat models: what the KV cache holds (float32, float16, bfloat16); see
    ``--kv-cache-dtype``."""


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]
    """The default chat model first."""


class ModelHealth(BaseModel):
    model_config = OPEN

    status: Literal["ok", "loading", "error"]
    kind: Literal["chat", "embedding"]
    engine: dict[str, Any] | None = None
    """Chat models: running and waiting sequences, KV blocks, preemptions, ..."""
    encoder: dict[str, Any] | None = None
    """Embedding models: batches run, inputs waiting, ..."""
    error: str | None = None


class CpuHealth(BaseModel):
    model_config = DOCUMENTED

    threads: int
    """Threads of the CPU kernels (--threads)."""
    cpus: int
    """CPUs this process may run on."""
    policy: Literal["adaptive", "fixed"]
    """adaptive: the count follows the CPUs other processes leave free; fixed: --threads or
    OMP_NUM_THREADS."""
    wait: str
    """How a thread waits for the others between parallel regions."""


class Health(BaseModel):
    """200 once every model is loaded; 503 (same shape) while one is loading or if one
    failed."""

    model_config = OPEN

    status: Literal["ok", "loading", "error"]
    models: dict[str, ModelHealth]
    """Each served model's status, by id."""
    model: str | None = None
    """The default chat model's id."""
    engine: dict[str, Any] | None = None
    """The default chat model's engine load."""
    cpu: CpuHealth | None = None
    """Extension. The CPU threads the kernels run on."""
    error: str | None = None


class TokenizeResponse(BaseModel):
    model_config = DOCUMENTED

    model: str
    """The model whose tokenizer was used."""
    tokens: list[int]
    count: int
    """len(tokens): for messages, what a chat request reports as usage.prompt_tokens."""
    max_model_len: int
    """The model's context length in tokens."""


class DetokenizeResponse(BaseModel):
    model: str
    prompt: str


class ReIsqResponse(BaseModel):
    """The chat model after re-quantization."""

    object: Literal["re_isq"]
    model: str
    ggml_type: str
    """The type as sent."""
    quantization: Literal["none", "f16", "int8", "int5", "int4", "bf16"]
    """The weight format it maps to."""
    weight_bytes: int
    """The weights' memory now."""
    weight_mib: float


class ResponseUsage(BaseModel):
    model_config = OPEN

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens_details: dict[str, int]


class ResponseOutputItem(BaseModel):
    """A `message` (with `output_text` content parts) or a `function_call` (with `call_id`,
    `name` and JSON `arguments`)."""

    model_config = OPEN

    id: str
    type: Literal["message", "function_call"]
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseObject(BaseModel):
    """OpenAI's response object (the SDK's `response.output_text` joins the message texts)."""

    model_config = OPEN

    id: str
    """`resp_...`: pass it as `previous_response_id` to continue the conversation."""
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    incomplete_details: dict[str, Any] | None
    """`{"reason": "max_output_tokens"}` when the limit cut the output."""
    error: dict[str, Any] | None
    model: str
    output: list[ResponseOutputItem]
    usage: ResponseUsage | None
    previous_response_id: str | None
    store: bool
    metadata: dict[str, Any]


class ResponseStreamEvent(BaseModel):
    """One SSE event: `response.created`, `response.in_progress`, `response.output_item.added`,
    `response.content_part.added`, `response.output_text.delta`, ..., `response.completed` (or
    `response.incomplete`, `response.failed`, `error`)."""

    model_config = OPEN

    type: str
    sequence_number: int
    """0, 1, 2, ... in the order sent."""


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]
