"""Typed inputs and outputs of the MCP tools (their JSON schemas are what clients see)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TextContent(BaseModel):
    """MCP text content."""

    type: Literal["text"]
    text: str


class ImageContent(BaseModel):
    """MCP image content."""

    type: Literal["image"]
    data: str = Field(description="the image, base64")
    mimeType: str = Field(description="image/png, image/jpeg, image/webp or image/gif")

    def as_part(self) -> dict[str, Any]:
        """The chat API's image part of the same image (a data URI)."""
        return {"type": "image_url",
                "image_url": {"url": f"data:{self.mimeType};base64,{self.data}"}}


Content = Annotated[TextContent | ImageContent, Field(discriminator="type")]


class Message(BaseModel):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Content] = Field(
        description="the message text, or a list of MCP content: {type: text, text} and, in "
                    "user messages to a model that reads images, {type: image, data (base64), "
                    "mimeType}")

    def as_chat(self) -> dict[str, Any]:
        """The chat API's message (image content as image_url parts with data URIs)."""
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        return {"role": self.role, "content": [
            c.as_part() if isinstance(c, ImageContent) else c.model_dump()
            for c in self.content]}


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens read from the prefix cache")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = Field(description="stop, length, or null if cut short")


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: str = Field(description="the call's arguments as a JSON string")


class GenerationResult(BaseModel):
    """A chat or completion result: the first choice's text, all choices, token usage."""

    text: str = Field(description="the generated text of the first choice")
    finish_reason: str | None = Field(
        description="why the first choice ended: stop, length, or tool_calls")
    usage: Usage
    model: str
    choices: list[Choice]
    tool_calls: list[ToolCall] = Field(default_factory=list,
                                       description="functions the first choice called")
    reasoning: str | None = Field(default=None, description="the first choice's thinking, "
                                  "when the model produced any")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResult(BaseModel):
    """One vector per input, in input order."""

    embeddings: list[list[float]]
    model: str
    dimensions: int = Field(description="the length of each vector")
    usage: EmbeddingUsage


class ModelInfo(BaseModel):
    id: str
    kind: str = Field(description="chat (chat and completions) or embedding")
    max_model_len: int = Field(description="context length in tokens")
    dtype: str
    capabilities: list[str]
    aliases: list[str] = Field(default_factory=list, description="other names that route here")
    dimensions: int | None = Field(default=None, description="vector length (embedding models)")
    architecture: str | None = Field(default=None,
                                     description="the checkpoint's model type (chat models)")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str = Field(description="ok, loading or error")
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="each served model's status, kind and load, by id")
    model: str | None = Field(default=None, description="the default chat model")
    error: str | None = None
    engine: dict[str, Any] | None = Field(default=None,
                                          description="the default chat model's engine load")
    cpu: dict[str, Any] | None = Field(
        default=None, description="the CPU kernels' threads, the CPUs available, how they wait")


class ResponseObject(BaseModel):
    """A Responses API response object (every OpenAI field; the main ones typed here) and its
    output text."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="resp_...: pass it as previous_response_id to continue")
    object: Literal["response"] = "response"
    status: str = Field(description="completed, or incomplete when max_output_tokens cut it")
    model: str
    output: list[dict[str, Any]] = Field(
        description="output items: message (content: output_text parts) and function_call "
                    "(call_id, name, arguments as a JSON string)")
    output_text: str = Field(description="every output_text part joined")
    usage: dict[str, Any] | None = Field(
        description="input_tokens, output_tokens, total_tokens (and their details)")
    previous_response_id: str | None = None
    store: bool = True


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool


def model_info(card: dict[str, Any]) -> ModelInfo:
    return ModelInfo(**{k: card[k] for k in ModelInfo.model_fields if k in card})
