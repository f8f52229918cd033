"""Wire models turn into engine sampling parameters."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequestError
from core.serving.handlers import choice_params
from http_api.protocol import ChatCompletionRequest, CompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]


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


def test_top_k_minus_one_means_off() -> None:
    body = ChatCompletionRequest.model_validate({"messages": MESSAGES, "top_k": -1})
    assert body.sampling_params().top_k == 0


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
