"""Turns engine step outputs into per-request text deltas: detokenizing and stop strings."""

from __future__ import annotations

from dataclasses import dataclass

from core.engine.detokenizer import Decoder, IncrementalDetokenizer, StopStringMatcher
from core.engine.grammar import GrammarCompiler
from core.engine.llm_engine import LLMEngine, StepOutput
from core.engine.outputs import RequestOutput
from core.engine.params import GrammarSpec
from core.engine.sequence import Sequence


@dataclass
class _RequestState:
    detokenizer: IncrementalDetokenizer
    matcher: StopStringMatcher
    trigger: tuple[str, GrammarSpec] | None = None
    recent: str = ""  # the tail of the output, to spot a grammar trigger split across tokens


class OutputProcessor:
    """Keeps the text state of every live sequence; ends a sequence that hits a stop string."""

    def __init__(self, engine: LLMEngine, tokenizer: Decoder,
                 grammars: GrammarCompiler | None = None) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._grammars = grammars
        self._states: dict[int, _RequestState] = {}

    def add(self, seq: Sequence) -> None:
        self._states[seq.seq_id] = _RequestState(
            IncrementalDetokenizer(self._tokenizer, seq.token_ids, seq.params.skip_special_tokens),
            StopStringMatcher(seq.params.stop), seq.params.triggered_grammar)

    def discard(self, seq: Sequence) -> None:
        self._states.pop(seq.seq_id, None)

    def process(self, outputs: list[StepOutput]) -> list[RequestOutput]:
        return [self._process_one(out) for out in outputs]

    def _process_one(self, out: StepOutput) -> RequestOutput:
        seq = out.seq
        state = self._states[seq.seq_id]
        piece = state.detokenizer.add(out.token_id)
        if state.trigger is not None:
            self._maybe_trigger(seq, state, piece)
        text = state.matcher.feed(piece)
        if state.matcher.stopped_on is not None and seq.finish_reason != "stop":
            self._engine.finish(seq, "stop")
            seq.finish_reason = "stop"
        if seq.is_finished:
            text += state.matcher.flush()
            del self._states[seq.seq_id]
        return RequestOutput(
            request_id=seq.request_id,
            text=text,
            token_ids=[out.token_id],
            logprobs=[out.logprob] if out.logprob is not None else [],
            finish_reason=seq.finish_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_prefix_cached_tokens or 0,
            num_output_tokens=seq.num_output_tokens,
        )

    def _maybe_trigger(self, seq: Sequence, state: _RequestState, piece: str) -> None:
        """Switch the grammar on once the output contains its trigger (e.g. a tool-call tag)."""
        assert state.trigger is not None
        trigger, spec = state.trigger
        state.recent = (state.recent + piece)[-4 * len(trigger):]
        if trigger in state.recent and self._grammars is not None and not seq.is_finished:
            seq.constraint = self._grammars.matcher(spec)
            state.trigger = None
