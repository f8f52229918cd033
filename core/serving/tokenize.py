"""The tokenize and detokenize handlers both front ends may share.

Tokenizing chat messages goes through the same prompt builder as a chat request
(:func:`core.serving.handlers.chat_prompt`), so ``count`` is what a chat request with the same
messages and tools reports as ``usage.prompt_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

from core.chat.images import has_media, load_images
from core.chat.tools import plan_tools
from core.errors import InvalidRequestError, ModelKindError
from core.serving.chat_model import ServedModel
from core.serving.handlers import chat_prompt
from core.serving.registry import ModelRegistry


@dataclass(frozen=True)
class TokenizeRequest:
    """A prompt, or chat messages to render with the model's chat template (not both)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True  # prompt only: the tokens a completion request adds
    add_generation_prompt: bool = True  # messages only
    enable_thinking: bool | None = None
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Tokens:
    """Token ids of a prompt, the model that made them and that model's context length."""

    model: str
    tokens: list[int]
    max_model_len: int


async def prepare_tokenize(models: ModelRegistry, request: TokenizeRequest) -> TokenizeRequest:
    """The request with its messages' image parts loaded, as a chat request's are
    (:func:`core.serving.handlers.prepare_chat`); await it before :func:`tokenize`."""
    if request.messages is None or not has_media(request.messages):
        return request
    model = models.any_model(request.model)
    if model.kind != "chat":
        return request  # tokenize() says why not
    chat = cast(ServedModel, model)
    return replace(request, messages=await load_images(
        request.messages, models.image_policy, chat.id, chat.input_modalities))


def tokenize(models: ModelRegistry, request: TokenizeRequest) -> Tokens:
    """Route ``model`` (any kind; ``default``: the default chat model) and tokenize."""
    if (request.prompt is None) == (request.messages is None):
        raise InvalidRequestError("send exactly one of 'prompt' and 'messages'", param="prompt")
    model = models.any_model(request.model)
    if request.messages is None:
        ids = model.tokenizer.encode(request.prompt or "",
                                     add_special_tokens=request.add_special_tokens)
        return Tokens(model.id, ids, model.max_model_len)
    if model.kind != "chat":
        raise ModelKindError(f"'{model.id}' is an embedding model: it has no chat template to "
                             "render 'messages'; send 'prompt'")
    plan = plan_tools(request.tools, None, None)
    prompt = chat_prompt(cast(ServedModel, model), request.messages, plan,
                         request.enable_thinking, request.add_generation_prompt)
    ids = prompt if isinstance(prompt, list) else prompt.token_ids  # images' tokens counted
    return Tokens(model.id, ids, model.max_model_len)


def detokenize(models: ModelRegistry, model_name: str | None, tokens: list[int]) -> tuple[str, str]:
    """(model id, text) of ``tokens``, special tokens kept; a 400 for ids outside the vocabulary."""
    model = models.any_model(model_name)
    vocab = model.tokenizer.vocab_size
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise InvalidRequestError(f"token ids must be in [0, {vocab}); got {bad[0]}",
                                  param="tokens")
    return model.id, model.tokenizer.decode(tokens, skip_special_tokens=False)
