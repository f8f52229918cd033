from __future__ import annotations

from typing import Any

import pytest

from core.engine.params import LIMITS, MAX_TOP_LOGPROBS, SamplingParams
from core.errors import InvalidRequestError
from tests.core.engine.edges import edges

# The spec's fields that are not SamplingParams fields (n) or not a plain number (logit_bias).
NOT_NUMBERS = ("n", "logit_bias")


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"top_k": 1 << 63}, "top_k"),  # found by the fuzzing: it failed the whole batch
    ({"seed": 1 << 63}, "seed"),
    ({"seed": -(1 << 63) - 1}, "seed"),
    ({"min_p": -0.1}, "min_p"),
    ({"min_p": 1.5}, "min_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"frequency_penalty": 2.1}, "frequency_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"top_logprobs": -1}, "top_logprobs"),
    ({"top_logprobs": MAX_TOP_LOGPROBS + 1}, "top_logprobs"),
    ({"stop": ("ok", "")}, "stop"),
    ({"logit_bias": ((5, 100.5),)}, "logit_bias"),
    ({"logit_bias": ((5, -101.0),)}, "logit_bias"),
])
def test_out_of_range_values_name_their_param(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert info.value.code == "invalid_value"
    assert info.value.status_code == 400


@pytest.mark.parametrize("kwargs", [
    {"temperature": 0.0},
    {"top_p": 1.0, "top_k": 0, "min_p": 1.0},
    {"presence_penalty": -2.0, "frequency_penalty": 2.0},
    {"max_tokens": 1, "min_tokens": 0},
    {"top_logprobs": MAX_TOP_LOGPROBS},
    {"logit_bias": ((1, -100.0), (2, 100.0))},
])
def test_boundary_values_are_accepted(kwargs: dict[str, Any]) -> None:
    SamplingParams(**kwargs)


def test_zero_temperature_is_greedy() -> None:
    assert SamplingParams(temperature=0).is_greedy
    assert not SamplingParams(temperature=0.7).is_greedy


def test_needs_penalties_only_when_one_is_set() -> None:
    assert not SamplingParams().needs_penalties
    assert SamplingParams(presence_penalty=0.1).needs_penalties
    assert SamplingParams(repetition_penalty=1.1).needs_penalties


def test_top_k_minus_one_is_off() -> None:
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams.from_optional(top_k=-1).top_k == 0


@pytest.mark.parametrize(("name", "inside", "past"),
                         [e for e in edges() if e[0] not in NOT_NUMBERS])
def test_limits_are_the_engine_bounds(name: str, inside: float, past: float) -> None:
    admitted: dict[str, Any] = {name: inside}
    refused: dict[str, Any] = {name: past}
    SamplingParams(**admitted)
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**refused)
    assert info.value.param == name


def test_logit_bias_limits() -> None:
    bounds = LIMITS["logit_bias"]
    SamplingParams(logit_bias=((1, bounds.ge), (2, bounds.le)))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        SamplingParams(logit_bias=((1, bounds.le + 0.5),))  # type: ignore[operator]


def test_from_optional_none_means_the_default() -> None:
    assert SamplingParams.from_optional() == SamplingParams()
    nones = dict.fromkeys(("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                           "frequency_penalty", "repetition_penalty", "seed", "max_tokens",
                           "min_tokens", "top_logprobs", "stop", "stop_token_ids",
                           "logit_bias"))
    assert SamplingParams.from_optional(**nones) == SamplingParams()  # type: ignore[arg-type]
    for name in LIMITS:
        if name not in NOT_NUMBERS:
            assert getattr(SamplingParams(), name) == LIMITS[name].default


def test_from_optional_converts_the_wire_forms() -> None:
    p = SamplingParams.from_optional(temperature=0.0, stop="END", logit_bias={5: -1.0},
                                     stop_token_ids=[7], top_k=-1, max_tokens=3)
    assert (p.temperature, p.stop, p.logit_bias, p.stop_token_ids) == (0.0, ("END",),
                                                                        ((5, -1.0),), (7,))
    assert (p.top_k, p.max_tokens) == (0, 3)
    assert SamplingParams.from_optional(stop=["a", "b"]).stop == ("a", "b")
