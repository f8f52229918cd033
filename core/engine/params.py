"""User intent for one generation: frozen sampling parameters and stop rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from core.errors import InvalidRequestError

T = TypeVar("T")

MAX_N = 16  # choices per prompt
COMPLETION_MAX_TOKENS = 16  # OpenAI's default max_tokens of a text completion
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # OpenAI's bound on logit_bias entries
MAX_STOP = 16
MAX_STOP_TOKEN_IDS = 1024
INT64 = 1 << 63  # top_k and seeds reach torch as int64 (a larger one failed the whole batch)


@dataclass(frozen=True)
class Limits(Generic[T]):
    """One request field's default (what an omitted or null value means) and its bounds:
    ``ge``/``le`` inclusive, ``gt`` exclusive. The HTTP models' and MCP tools' schemas and
    :class:`SamplingParams` all read them from :data:`LIMITS`."""

    default: T
    ge: int | float | None = None
    gt: int | float | None = None
    le: int | float | None = None

    def admits(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))

    def describe(self) -> str:
        """The range in words: ``in [0, 2]``, ``in (0, 1]``, ``>= 1``, ``> 0``."""
        low = self.ge if self.ge is not None else self.gt
        if self.le is None:
            return f"{'>=' if self.ge is not None else '>'} {low}"
        return f"in {'[' if self.ge is not None else '('}{low}, {self.le}]"


TEMPERATURE = Limits(1.0, ge=0, le=2)  # 0: greedy
TOP_P = Limits(1.0, gt=0, le=1)
TOP_K = Limits(0, ge=-1)  # 0 or -1: off
MIN_P = Limits(0.0, ge=0, le=1)
PRESENCE_PENALTY = Limits(0.0, ge=-2, le=2)
FREQUENCY_PENALTY = Limits(0.0, ge=-2, le=2)
REPETITION_PENALTY = Limits(1.0, gt=0)
MAX_TOKENS: Limits[int | None] = Limits(None, ge=1)  # None: until the context is full
MIN_TOKENS = Limits(0, ge=0)
TOP_LOGPROBS = Limits(0, ge=0, le=MAX_TOP_LOGPROBS)
LOGIT_BIAS = Limits(0.0, ge=-100, le=100)  # each token's bias
N = Limits(1, ge=1, le=MAX_N)  # choices per prompt (a request field, not a SamplingParams one)

# Every bounded field by name; the front ends' tests walk it.
LIMITS: dict[str, Limits[Any]] = {
    "temperature": TEMPERATURE, "top_p": TOP_P, "top_k": TOP_K, "min_p": MIN_P,
    "presence_penalty": PRESENCE_PENALTY, "frequency_penalty": FREQUENCY_PENALTY,
    "repetition_penalty": REPETITION_PENALTY, "max_tokens": MAX_TOKENS,
    "min_tokens": MIN_TOKENS, "top_logprobs": TOP_LOGPROBS, "logit_bias": LOGIT_BIAS, "n": N,
}


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

    temperature: float = TEMPERATURE.default
    top_p: float = TOP_P.default
    top_k: int = TOP_K.default
    min_p: float = MIN_P.default
    presence_penalty: float = PRESENCE_PENALTY.default
    frequency_penalty: float = FREQUENCY_PENALTY.default
    repetition_penalty: float = REPETITION_PENALTY.default
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    max_tokens: int | None = MAX_TOKENS.default
    min_tokens: int = MIN_TOKENS.default
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = TOP_LOGPROBS.default
    skip_special_tokens: bool = True
    grammar: GrammarSpec | None = field(default=None, hash=False)
    # (trigger text, grammar): the grammar applies once the output contains the trigger
    triggered_grammar: tuple[str, GrammarSpec] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.top_k == -1:  # OpenAI-compatible servers' "off"
            object.__setattr__(self, "top_k", 0)
        for name in _SAMPLING_FIELDS:
            value, limits = getattr(self, name), LIMITS[name]
            _check(value is None or limits.admits(value), name, f"must be {limits.describe()}")
        _check(self.top_k < INT64, "top_k", "must fit in 64 bits")
        _check(self.seed is None or -INT64 <= self.seed < INT64, "seed",
               "must fit in a signed 64-bit integer")
        _check(all(s for s in self.stop), "stop", "stop strings must not be empty")
        _check(len(self.stop) <= MAX_STOP, "stop", f"may list at most {MAX_STOP} strings")
        _check(len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS, "stop_token_ids",
               f"may list at most {MAX_STOP_TOKEN_IDS} token ids")
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS, "logit_bias",
               f"may have at most {MAX_LOGIT_BIAS} entries, not {len(self.logit_bias)}")
        for token_id, bias in self.logit_bias:
            _check(LOGIT_BIAS.admits(bias), "logit_bias",
                   f"bias for token {token_id} not {LOGIT_BIAS.describe()}")

    @classmethod
    def from_optional(cls, *, temperature: float | None = None, top_p: float | None = None,
                      top_k: int | None = None, min_p: float | None = None,
                      presence_penalty: float | None = None,
                      frequency_penalty: float | None = None,
                      repetition_penalty: float | None = None,
                      logit_bias: Mapping[int, float] | None = None, seed: int | None = None,
                      max_tokens: int | None = None, min_tokens: int | None = None,
                      stop: str | Sequence[str] | None = None,
                      stop_token_ids: Sequence[int] | None = None, ignore_eos: bool = False,
                      logprobs: bool = False, top_logprobs: int | None = None
                      ) -> SamplingParams:
        """Sampling parameters from a request's optional fields, as both front ends receive
        them: None means the field's default (:data:`LIMITS`), ``top_k`` -1 means off and
        ``stop`` may be one string. Out-of-range values raise InvalidRequestError."""
        return cls(
            temperature=_or(temperature, TEMPERATURE), top_p=_or(top_p, TOP_P),
            top_k=_or(top_k, TOP_K), min_p=_or(min_p, MIN_P),
            presence_penalty=_or(presence_penalty, PRESENCE_PENALTY),
            frequency_penalty=_or(frequency_penalty, FREQUENCY_PENALTY),
            repetition_penalty=_or(repetition_penalty, REPETITION_PENALTY),
            logit_bias=tuple((logit_bias or {}).items()), seed=seed,
            max_tokens=_or(max_tokens, MAX_TOKENS), min_tokens=_or(min_tokens, MIN_TOKENS),
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            stop_token_ids=tuple(stop_token_ids or ()), ignore_eos=ignore_eos,
            logprobs=logprobs, top_logprobs=_or(top_logprobs, TOP_LOGPROBS))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def needs_penalties(self) -> bool:
        return (self.presence_penalty != 0 or self.frequency_penalty != 0
                or self.repetition_penalty != 1)


_SAMPLING_FIELDS = tuple(name for name in LIMITS if name not in ("logit_bias", "n"))


def _or(value: T | None, limits: Limits[T]) -> T:
    return limits.default if value is None else value


def _check(ok: bool, param: str, what: str) -> None:
    if not ok:
        raise InvalidRequestError(f"'{param}' {what}", param=param, code="invalid_value")
