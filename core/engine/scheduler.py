"""Continuous-batching scheduler in plain Python (no torch).

Every step runs one batch of at most ``max_batched_tokens`` new tokens: one token for each
decoding sequence, then chunks of prompts still being prefilled, then newly admitted prompts.
A long prompt is thus prefilled a chunk per step while the running streams keep decoding (chunked
prefill). An admitted prompt first reuses the cached blocks of its longest known prefix. When the
cache runs out of blocks the newest running sequence is preempted (its blocks freed, recomputed
later).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from core.engine.block_manager import BlockManager
from core.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """What the model runs next: ``num_new_tokens[i]`` tokens of ``seqs[i]``, the multi-token
    chunks first; a sequence whose chunk reaches its last token samples one."""

    seqs: list[Sequence]
    num_new_tokens: list[int]

    @property
    def sampling(self) -> list[Sequence]:
        """The sequences this step samples a token for, in ``seqs`` order."""
        return [s for s, n in zip(self.seqs, self.num_new_tokens, strict=True)
                if s.num_cached_tokens + n == len(s)]

    @property
    def is_prefill(self) -> bool:
        """True when the batch holds any prompt chunk (more than one new token)."""
        return any(n > 1 for n in self.num_new_tokens)


class Scheduler:
    """Owns the waiting queue and the running batch."""

    def __init__(self, blocks: BlockManager, max_seqs: int, max_batched_tokens: int) -> None:
        if max_batched_tokens < max_seqs:
            raise ValueError("max_batched_tokens must be at least max_seqs (one token each)")
        self.blocks = blocks
        self.max_seqs = max_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_prefix_queries = 0  # prompt tokens admitted
        self.num_prefix_hits = 0  # of which the prefix cache already held

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch | None:
        """Pick the next batch, or None when there is nothing to run."""
        chunks: dict[int, tuple[Sequence, int]] = {}
        budget = self.max_batched_tokens
        decoding = [s for s in self.running if s.num_uncomputed_tokens == 1]
        prefilling = [s for s in self.running if s.num_uncomputed_tokens > 1]
        for seq in decoding + prefilling:
            if seq not in self.running or budget == 0:
                continue
            num_new = self._chunk(seq, budget)
            if self._reserve(seq, seq.num_cached_tokens + num_new):
                chunks[seq.seq_id] = (seq, num_new)
                budget = max(0, budget - num_new)
        for seq in [s for s, _ in chunks.values() if s not in self.running]:
            del chunks[seq.seq_id]  # preempted by a later reservation
        for seq, num_new in self._admit(budget):
            chunks[seq.seq_id] = (seq, num_new)
        if not chunks:
            return None
        ordered = sorted(chunks.values(), key=lambda c: c[1] == 1)  # chunks first, stable
        return ScheduledBatch([s for s, _ in ordered], [n for _, n in ordered])

    def computed(self, batch: ScheduledBatch) -> None:
        """Record that the model has written the keys and values of ``batch``'s new tokens."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_cached_tokens += num_new
            self.blocks.cache_full_blocks(seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Mark ``seq`` finished with ``reason`` and free its blocks at once."""
        if seq.is_finished:
            return
        seq.finish_reason = reason
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)

    def _admit(self, budget: int) -> list[tuple[Sequence, int]]:
        admitted: list[tuple[Sequence, int]] = []
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            seq = self.waiting[0]
            self.blocks.reuse_prefix(seq)
            num_new = self._chunk(seq, budget)
            if not self.blocks.can_allocate(seq, seq.num_cached_tokens + num_new):
                self.blocks.free(seq)
                break
            self.waiting.popleft()
            self.blocks.allocate(seq, seq.num_cached_tokens + num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append((seq, num_new))
            self.num_prefix_queries += len(seq)
            self.num_prefix_hits += seq.num_cached_tokens
            if seq.num_prefix_cached_tokens is None:  # not when readmitted after preemption
                seq.num_prefix_cached_tokens = seq.num_cached_tokens
            budget = max(0, budget - num_new)
        return admitted

    @staticmethod
    def _chunk(seq: Sequence, budget: int) -> int:
        """How many of ``seq``'s uncomputed tokens run this step: what the budget allows, an
        image whole (its tokens may attend to each other both ways: Gemma 3's do)."""
        start = seq.num_cached_tokens
        return seq.chunk_stop(start, start + min(seq.num_uncomputed_tokens, budget)) - start

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for ``seq`` to hold ``num_tokens``, preempting the newest sequences if
        needed; False if ``seq`` itself had to go."""
        while not self.blocks.can_allocate(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.allocate(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
