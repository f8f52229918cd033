"""User intent for one generation: frozen sampling parameters and stop rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidRequestError

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # OpenAI's bound on logit_bias entries
MAX_STOP = 16
MAX_STOP_TOKEN_IDS = 1024
INT64 = 1 << 63  # top_k and seeds reach torch as int64 (a larger one failed the whole batch)


GRAMMAR_KINDS = ("regex", "lark", "json_schema", "llguidance")


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint on the output: a regex, a Lark grammar, a JSON schema, or an llguidance
    grammar object. ``value`` is the pattern/grammar text, or the schema/grammar as a dict."""

    kind: str
    value: Any

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise InvalidRequestError(f"grammar type must be one of {', '.join(GRAMMAR_KINDS)}, "
                                      f"not {self.kind!r}", param="grammar.type")
        if not isinstance(self.value, str | dict) or not self.value:
            raise InvalidRequestError("grammar value must be a non-empty string or object",
                                      param="grammar.value")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    ``temperature == 0`` means greedy decoding. ``max_tokens=None`` means "until the context is
    full". ``stop`` strings are never part of the returned text, also when a stop string spans
    several tokens. ``logprobs`` asks for the chosen token's log-probability, ``top_logprobs``
    for that many alternatives (0..20).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    grammar: GrammarSpec | None = field(default=None, hash=False)
    # (trigger text, grammar): the grammar applies once the output contains the trigger
    triggered_grammar: tuple[str, GrammarSpec] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(0 <= self.top_k < INT64, "top_k", "must be >= 0 (0 disables it) and fit in 64 "
               "bits")
        _check(self.seed is None or -INT64 <= self.seed < INT64, "seed",
               "must fit in a signed 64-bit integer")
        _check(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        _check(self.repetition_penalty > 0, "repetition_penalty", "must be > 0")
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be >= 1")
        _check(self.min_tokens >= 0, "min_tokens", "must be >= 0")
        _check(0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs",
               f"must be in [0, {MAX_TOP_LOGPROBS}]")
        _check(all(s for s in self.stop), "stop", "stop strings must not be empty")
        _check(len(self.stop) <= MAX_STOP, "stop", f"may list at most {MAX_STOP} strings")
        _check(len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS, "stop_token_ids",
               f"may list at most {MAX_STOP_TOKEN_IDS} token ids")
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS, "logit_bias",
               f"may have at most {MAX_LOGIT_BIAS} entries, not {len(self.logit_bias)}")
        for token_id, bias in self.logit_bias:
            _check(-100 <= bias <= 100, "logit_bias",
                   f"bias for token {token_id} not in [-100, 100]")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def needs_penalties(self) -> bool:
        return (self.presence_penalty != 0 or self.frequency_penalty != 0
                or self.repetition_penalty != 1)


def _check(ok: bool, param: str, what: str) -> None:
    if not ok:
        raise InvalidRequestError(f"'{param}' {what}", param=param, code="invalid_value")
