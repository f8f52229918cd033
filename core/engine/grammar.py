"""Constrained decoding with llguidance: grammars compiled per request, token masks per step.

Front ends describe what they want as a :class:`core.engine.params.GrammarSpec` (regex, Lark,
JSON schema or a raw llguidance grammar). :class:`GrammarCompiler` checks it before the request
is admitted (a bad grammar is a 400 with llguidance's message) and returns a fresh
:class:`GrammarMatcher` for the sequence, which masks logits and consumes sampled tokens.

Hostile grammars are bounded: regex, Lark and llguidance texts longer than
``MAX_GRAMMAR_TEXT`` are refused before compiling (compiling a regex lexer can take time
quadratic in its length), and llguidance's own limits bound the work per mask. A matcher that
fails while generating (a limit hit, an error raised) records the error and ends its sequence;
the engine then fails that request alone, never its batch neighbours.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import torch

from core.engine.params import GrammarSpec
from core.errors import InvalidRequestError

# Compact JSON so tool-call text has one predictable layout.
_JSON_OPTIONS: Any = {"whitespace_flexible": False}
MAX_GRAMMAR_TEXT = 16 << 10  # bytes of a regex / Lark / llguidance grammar text
# A fifth of llguidance's default fuel for building the lexer: a pathological regex fails (or
# finishes) in a fraction of a second instead of stalling the engine's step for seconds.
_LIMITS = llguidance.LLParserLimits(initial_lexer_fuel=200_000)


def grammar_source(spec: GrammarSpec) -> str:
    """The llguidance grammar text for ``spec`` (not yet validated)."""
    if isinstance(spec.value, str) and len(spec.value.encode()) > MAX_GRAMMAR_TEXT:
        raise InvalidRequestError(f"the {spec.kind} grammar is {len(spec.value.encode())} bytes; "
                                  f"at most {MAX_GRAMMAR_TEXT} are accepted", param="grammar")
    try:
        if spec.kind == "regex":
            return str(llguidance.LLMatcher.grammar_from_regex(str(spec.value)))
        if spec.kind == "lark":
            return str(llguidance.LLMatcher.grammar_from_lark(str(spec.value)))
        if spec.kind == "json_schema":
            schema = json.loads(spec.value) if isinstance(spec.value, str) else spec.value
            return str(llguidance.LLMatcher.grammar_from_json_schema(schema,
                                                                      defaults=_JSON_OPTIONS))
        if spec.kind == "llguidance":
            return spec.value if isinstance(spec.value, str) else json.dumps(spec.value)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"invalid {spec.kind} grammar: {exc}", param="grammar") from None
    raise InvalidRequestError(f"unknown grammar type {spec.kind!r}; use regex, lark, json_schema "
                              "or llguidance", param="grammar")


class GrammarMatcher:
    """One sequence's grammar state: which tokens may come next, and whether it is complete."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher
        self._failure: str | None = None

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """(vocab,) bool mask of the tokens the grammar allows next. Once the matcher has
        failed every token is allowed (the sequence is ended right after this step), so a
        failed grammar never turns its batch row into NaNs."""
        try:
            if self.error is None:
                raw = self._matcher.compute_bitmask()
                words = torch.frombuffer(bytearray(raw), dtype=torch.int32)
                bits = (words.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1
                mask = bits.flatten()[:vocab_size].bool()  # (vocab,)
                if self.error is None and bool(mask.any()):
                    return mask
                self._failure = self._failure or "the grammar allows no next token"
        except Exception as exc:  # contained: it fails this sequence, not the batch
            self._failure = f"{type(exc).__name__}: {exc}"
        return torch.ones(vocab_size, dtype=torch.bool)

    def consume(self, token_id: int) -> None:
        if self.error is not None:
            return
        try:
            self._matcher.consume_token(token_id)
        except Exception as exc:
            self._failure = f"{type(exc).__name__}: {exc}"

    @property
    def is_finished(self) -> bool:
        """The grammar is complete and allows no further token (or it has failed)."""
        return self.error is not None or bool(self._matcher.is_stopped())

    @property
    def error(self) -> str | None:
        """Why the matcher failed (a limit hit, a rejected token), or None."""
        if self._failure is None and self._matcher.is_error():
            self._failure = str(self._matcher.get_error())
        return self._failure


class GrammarCompiler:
    """Builds matchers for one tokenizer (its llguidance form is made once, on first use)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        self._hf_tokenizer = hf_tokenizer
        self._vocab_size = vocab_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _lltokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf  # transformers: imported here, not at start-up's outset

                self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer,
                                                               n_vocab=self._vocab_size)
            return self._tokenizer

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        """A fresh matcher for ``spec``; raises InvalidRequestError if the grammar is invalid."""
        matcher = llguidance.LLMatcher(self._lltokenizer(), grammar_source(spec), log_level=0,
                                       limits=_LIMITS)
        if matcher.is_error():
            raise InvalidRequestError(f"invalid {spec.kind} grammar: {matcher.get_error()}",
                                      param="grammar")
        return GrammarMatcher(matcher)
