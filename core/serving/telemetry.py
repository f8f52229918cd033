"""Token counts and token timings of every generation, for whoever watches the server.

Both front ends run generations through :mod:`core.serving.handlers`, which gives each engine
stream a :class:`StreamTimer`. The timer turns the stream's outputs, as the front end receives
them, into time to first token, inter-token latency and token counts, and hands them to the
registry's :class:`GenerationObserver` list (the HTTP front end's Prometheus metrics, say).
``core`` never imports a metrics library.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from core.engine.outputs import RequestOutput


class GenerationObserver(Protocol):
    """Receives what generations do; called on the event loop, so it must be quick."""

    def on_first_token(self, model: str, seconds: float) -> None:
        """A sequence's first generated token arrived ``seconds`` after it was submitted."""

    def on_inter_token(self, model: str, seconds: float) -> None:
        """One more generated token arrived ``seconds`` after the previous one."""

    def on_tokens(self, model: str, prompt_tokens: int, generated_tokens: int) -> None:
        """A model read ``prompt_tokens`` more prompt tokens and wrote ``generated_tokens``."""


class StreamTimer:
    """Feed it one stream's outputs in order; it reports to ``observers``.

    Prompt tokens are reported with the first output, generated tokens as they arrive (so an
    aborted stream counts what it produced). Tokens that arrive together after the first share
    the gap since the previous output.
    """

    def __init__(self, model: str, observers: Sequence[GenerationObserver],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._observers = observers
        self._clock = clock
        self._last = clock()
        self._seen = 0
        self._prompt_reported = False

    def __call__(self, output: RequestOutput) -> None:
        now = self._clock()
        prompt = 0 if self._prompt_reported else output.num_prompt_tokens
        self._prompt_reported = self._prompt_reported or prompt > 0
        new = output.num_output_tokens - self._seen
        if new > 0:
            if self._seen == 0:
                self._each(lambda o: o.on_first_token(self._model, now - self._last))
            else:
                gap = (now - self._last) / new
                for _ in range(new):
                    self._each(lambda o: o.on_inter_token(self._model, gap))
            self._seen, self._last = output.num_output_tokens, now
        if prompt or new > 0:
            self._each(lambda o: o.on_tokens(self._model, prompt, max(new, 0)))

    def _each(self, call: Callable[[GenerationObserver], None]) -> None:
        for observer in self._observers:
            call(observer)
