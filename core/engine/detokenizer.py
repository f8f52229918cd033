"""Incremental detokenization and stop-string matching for streamed text.

Text is released only once it is valid UTF-8 (no U+FFFD from a half-decoded byte sequence) and
cannot be the start of a stop string, so a stream never shows a broken character or a stop
string, also when either is split across tokens.
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


# Tokens of context decoded before the new ones, so leading spaces and merges come out right.
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that are safe to show."""

    def __init__(self, tokenizer: Decoder, prompt_ids: list[int], skip_special_tokens: bool = True
                 ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def add(self, token_id: int) -> str:
        """Append one token; return the newly decodable text (possibly empty)."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full[len(prefix):]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)


class StopStringMatcher:
    """Holds text back until it cannot begin a stop string; reports when one is hit."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = stop
        self._pending = ""
        self.stopped_on: str | None = None

    def feed(self, text: str) -> str:
        """Add generated text; return what may be released now (never any part of a stop)."""
        if self.stopped_on is not None:
            return ""
        self._pending += text
        if not self._stop:
            released, self._pending = self._pending, ""
            return released
        hit = self._first_hit()
        if hit is not None:
            index, stop = hit
            self.stopped_on = stop
            released, self._pending = self._pending[:index], ""
            return released
        keep = self._longest_stop_prefix_suffix()
        cut = len(self._pending) - keep
        released, self._pending = self._pending[:cut], self._pending[cut:]
        return released

    def flush(self) -> str:
        """Release what is still held back (the sequence ended for another reason)."""
        released, self._pending = self._pending, ""
        return released if self.stopped_on is None else ""

    def _first_hit(self) -> tuple[int, str] | None:
        """The stop that completes first (the longest of those ending at the same place), so
        the result does not depend on how the text was split into feeds."""
        hits = [(i + len(s), i, s) for s in self._stop if (i := self._pending.find(s)) >= 0]
        if not hits:
            return None
        _, index, stop = min(hits)
        return index, stop

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest tail of pending text that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best
