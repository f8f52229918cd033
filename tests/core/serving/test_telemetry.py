"""StreamTimer turns a stream's outputs into first-token, inter-token and token-count reports."""

from __future__ import annotations

from core.engine.outputs import RequestOutput
from core.serving.telemetry import StreamTimer


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, float | tuple[int, int]]] = []

    def on_first_token(self, model: str, seconds: float) -> None:
        self.events.append(("first", model, round(seconds, 6)))

    def on_inter_token(self, model: str, seconds: float) -> None:
        self.events.append(("inter", model, round(seconds, 6)))

    def on_tokens(self, model: str, prompt_tokens: int, generated_tokens: int) -> None:
        self.events.append(("tokens", model, (prompt_tokens, generated_tokens)))


def out(num_output_tokens: int, finish: str | None = None) -> RequestOutput:
    return RequestOutput("r", num_prompt_tokens=5, num_output_tokens=num_output_tokens,
                         finish_reason=finish)


def test_first_token_then_gaps_then_counts() -> None:
    times = iter([10.0, 10.5, 10.7, 11.1, 11.1])
    recorder = Recorder()
    timer = StreamTimer("m", [recorder], clock=lambda: next(times))
    timer(out(1))  # at 10.5: first token 0.5 s after submission
    timer(out(2))  # at 10.7: one token 0.2 s later
    timer(out(4))  # at 11.1: two tokens share 0.4 s
    timer(out(4, "stop"))  # nothing new
    assert recorder.events == [
        ("first", "m", 0.5), ("tokens", "m", (5, 1)),
        ("inter", "m", 0.2), ("tokens", "m", (0, 1)),
        ("inter", "m", 0.2), ("inter", "m", 0.2), ("tokens", "m", (0, 2)),
    ]


def test_an_error_before_any_token_reports_nothing() -> None:
    recorder = Recorder()
    timer = StreamTimer("m", [recorder])
    timer(RequestOutput("r", error=None, finish_reason="abort"))
    assert recorder.events == []


def test_every_observer_hears_it() -> None:
    first, second = Recorder(), Recorder()
    StreamTimer("m", [first, second])(out(1))
    assert [e[0] for e in first.events] == [e[0] for e in second.events] == ["first", "tokens"]
