"""Wire models turn into engine sampling parameters."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from core.engine.params import LIMITS
from core.errors import InvalidRequestError
from core.serving.handlers import choice_params
from http_api.protocol import ChatCompletionRequest, CompletionRequest, ResponseCreateRequest
from tests.core.engine.edges import edges

MESSAGES = [{"role": "user", "content": "hi"}]
MODELS = [ChatCompletionRequest, CompletionRequest, ResponseCreateRequest]
BASE: dict[type[BaseModel], dict[str, Any]] = {
    ChatCompletionRequest: {"messages": MESSAGES}, CompletionRequest: {"prompt": "x"},
    ResponseCreateRequest: {"input": "x"}}


def test_chat_fields_map_to_sampling_params() -> None:
    body = ChatCompletionRequest.model_validate({
        "messages": MESSAGES, "temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.1,
        "stop": "END", "seed": 3, "max_completion_tokens": 9, "max_tokens": 50,
        "logit_bias": {"42": 5}, "logprobs": True, "top_logprobs": 2})
    p = body.sampling_params()
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.5, 0.9, 7, 0.1)
    assert p.stop == ("END",) and p.seed == 3 and p.max_tokens == 9
    assert p.logit_bias == ((42, 5.0),) and p.logprobs and p.top_logprobs == 2


def test_chat_request_carries_n_truncation_and_thinking() -> None:
    body = ChatCompletionRequest.model_validate({"messages": MESSAGES, "seed": 10, "n": 3,
                                                 "truncate_sequence": True,
                                                 "enable_thinking": False})
    request = body.to_request()
    assert (request.n, request.truncate, request.enable_thinking) == (3, True, False)
    assert [choice_params(request.params, i).seed for i in range(3)] == [10, 11, 12]


@pytest.mark.parametrize("model", MODELS)
def test_top_k_minus_one_means_off(model: type[BaseModel]) -> None:
    body = model.model_validate({**BASE[model], "top_k": -1})
    assert body.sampling_params().top_k == 0  # type: ignore[attr-defined]


def _body(model: type[BaseModel], name: str, value: float) -> dict[str, Any] | None:
    """A request of ``model`` with the spec's field ``name`` set to ``value`` (None: the model
    has no such field)."""
    if model is CompletionRequest and name == "top_logprobs":
        name = "logprobs"
    if model is ResponseCreateRequest and name == "max_tokens":
        name = "max_output_tokens"
    if name not in model.model_fields or (model, name) == (ResponseCreateRequest,
                                                           "top_logprobs"):  # unsupported
        return None
    if name == "logit_bias":
        return {**BASE[model], "logit_bias": {"5": value}}
    if name == "top_logprobs":
        return {**BASE[model], "logprobs": True, "top_logprobs": value}
    return {**BASE[model], name: value}


@pytest.mark.parametrize(("model", "name", "inside", "past"), [
    (model, *edge) for model in MODELS for edge in edges() if _body(model, edge[0], 0) is not None])
def test_limits_are_the_spec(model: type[BaseModel], name: str, inside: float,
                             past: float) -> None:
    """Every request model admits each bound of the shared spec (of the fields it has) and
    refuses just past it."""
    admitted, refused = _body(model, name, inside), _body(model, name, past)
    assert admitted is not None and refused is not None
    model.model_validate(admitted).to_request()  # type: ignore[attr-defined]
    with pytest.raises((ValidationError, InvalidRequestError)):
        model.model_validate(refused).to_request()  # type: ignore[attr-defined]


def test_spec_fields_are_chat_fields() -> None:
    assert set(LIMITS) <= set(ChatCompletionRequest.model_fields)


def test_bad_logit_bias_key() -> None:
    body = ChatCompletionRequest.model_validate({"messages": MESSAGES, "logit_bias": {"x": 1}})
    with pytest.raises(InvalidRequestError):
        body.sampling_params()


@pytest.mark.parametrize(("prompt", "expected"), [
    ("abc", ["abc"]),
    ([1, 2, 3], [[1, 2, 3]]),
    (["a", "b"], ["a", "b"]),
    ([[1, 2], [3]], [[1, 2], [3]]),
])
def test_completion_prompt_forms(prompt: object, expected: list[object]) -> None:
    assert CompletionRequest.model_validate({"prompt": prompt}).prompts() == expected


def test_completion_defaults_to_16_tokens() -> None:
    assert CompletionRequest.model_validate({"prompt": "x"}).sampling_params().max_tokens == 16
