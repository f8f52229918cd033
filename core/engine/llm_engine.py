"""The synchronous engine: one ``step()`` is schedule -> run -> postprocess."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from core.engine.block_manager import BlockManager
from core.engine.model_runner import ModelRunner
from core.engine.params import SamplingParams
from core.engine.sampler import Sampler
from core.engine.scheduler import Scheduler
from core.engine.sequence import FinishReason, Sequence, TokenLogprob


@dataclass(frozen=True)
class EngineConfig:
    """Capacity limits: the running batch, the context, tokens per step (prefill chunking) and
    whether prompts share cached prefixes."""

    max_seqs: int = 16
    max_seq_len: int = 2048
    max_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    seed: int | None = None


@dataclass
class StepOutput:
    """One new token of one sequence; ``seq.finish_reason`` is set if it ended the sequence."""

    seq: Sequence
    token_id: int
    logprob: TokenLogprob | None


class LLMEngine:
    """Runs the model over the scheduled batch one step at a time (single-threaded)."""

    def __init__(self, runner: ModelRunner, config: EngineConfig) -> None:
        self.runner = runner
        self.config = config
        self.blocks = BlockManager(runner.num_blocks, runner.block_size,
                                   config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_seqs,
                                   max(config.max_batched_tokens, config.max_seqs))
        self.sampler = Sampler(runner.config.eos_token_ids, config.seed)
        self._seq_ids = itertools.count()

    @property
    def max_seq_len(self) -> int:
        cache_tokens = self.blocks.num_usable_blocks * self.blocks.block_size
        return min(self.config.max_seq_len, cache_tokens,
                   self.runner.config.max_position_embeddings)

    def new_sequence(self, request_id: str, prompt: list[int], params: SamplingParams,
                     max_tokens: int) -> Sequence:
        return Sequence(next(self._seq_ids), request_id, list(prompt), params, max_tokens)

    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End ``seq`` now (stop string, abort) and free its KV blocks."""
        self.scheduler.finish(seq, reason)
        self.sampler.release(seq)

    def requantize(self, kind: str) -> None:
        """Reload the weights in quantization ``kind`` (:meth:`ModelRunner.quantize`) and drop
        the cached prompt prefixes, whose keys and values the old weights computed."""
        self.runner.quantize(kind)
        self.blocks.forget_prefixes()

    def step(self) -> list[StepOutput]:
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        sampling = batch.sampling
        logits = self.runner.run(batch, self.blocks)  # (len(sampling), vocab)
        self.scheduler.computed(batch)
        if not sampling:  # only prompt chunks that do not reach their end yet
            return []
        token_ids, logprobs = self.sampler(logits, sampling)
        return self._postprocess(sampling, token_ids, logprobs)

    def _postprocess(self, seqs: list[Sequence], token_ids: list[int],
                     logprobs: list[TokenLogprob | None]) -> list[StepOutput]:
        outputs = []
        for seq, token_id, logprob in zip(seqs, token_ids, logprobs, strict=True):
            seq.append(token_id)
            if seq.constraint is not None:
                seq.constraint.consume(token_id)
            reason = self._finish_reason(seq, token_id)
            if reason is not None:
                self.finish(seq, reason)
            outputs.append(StepOutput(seq, token_id, logprob))
        return outputs

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        params = seq.params
        if seq.num_output_tokens >= params.min_tokens:
            is_eos = token_id in self.runner.config.eos_token_ids and not params.ignore_eos
            if is_eos or token_id in params.stop_token_ids:
                return "stop"
        if seq.constraint is not None and seq.constraint.is_finished:
            return "stop"  # the grammar is complete
        if seq.num_output_tokens >= seq.max_tokens or len(seq) >= self.max_seq_len:
            return "length"
        return None
