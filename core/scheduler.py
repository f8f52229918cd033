"""Continuous-batching scheduler in plain Python (no torch).

Each step is either a prefill of newly admitted sequences or one decode token for every running
sequence. Waiting sequences join as soon as a batch slot and KV blocks are free; when decoding
runs out of blocks the newest running sequence is preempted (its blocks freed, recomputed later).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from core.block_manager import BlockManager
from core.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """What the model runs next: ``seqs`` all in prefill or all in decode."""

    seqs: list[Sequence]
    is_prefill: bool


class Scheduler:
    """Owns the waiting queue and the running batch."""

    def __init__(self, blocks: BlockManager, max_seqs: int, max_prefill_tokens: int) -> None:
        self.blocks = blocks
        self.max_seqs = max_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

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
        admitted = self._admit()
        if admitted:
            return ScheduledBatch(admitted, is_prefill=True)
        if not self.running:
            return None
        self._reserve_decode_slots()
        if not self.running:  # a lone sequence larger than the whole cache was preempted
            return None
        return ScheduledBatch(list(self.running), is_prefill=False)

    def finish(self, seq: Sequence, reason: str) -> None:
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

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        while self.waiting and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            num_new = len(seq) - seq.num_cached_tokens
            if admitted and num_new > budget:
                break
            if not self.blocks.can_allocate(seq, len(seq)):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq, len(seq))
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq)
            budget -= num_new
        return admitted

    def _reserve_decode_slots(self) -> None:
        """Make room for one more token per running sequence, preempting the newest if needed."""
        for seq in list(self.running):
            if seq not in self.running:
                continue
            while not self.blocks.can_allocate(seq, len(seq)):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.blocks.allocate(seq, len(seq))

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
