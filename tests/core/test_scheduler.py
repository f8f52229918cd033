from __future__ import annotations

from core.block_manager import BlockManager
from core.params import SamplingParams
from core.scheduler import ScheduledBatch, Scheduler
from core.sequence import Sequence, SequenceStatus


def make_seq(seq_id: int, num_tokens: int) -> Sequence:
    return Sequence(seq_id, f"req-{seq_id}", list(range(num_tokens)), SamplingParams(), 16)


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_seqs: int = 8,
                   max_prefill_tokens: int = 1024) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), max_seqs, max_prefill_tokens)


def next_batch(sched: Scheduler) -> ScheduledBatch:
    batch = sched.schedule()
    assert batch is not None
    return batch


def fake_run(batch: ScheduledBatch) -> None:
    """What the model runner and sampler do to a batch: cache its tokens, add one token each."""
    for seq in batch.seqs:
        seq.num_cached_tokens = len(seq)
        seq.append(7)


def test_nothing_to_schedule_returns_none() -> None:
    assert make_scheduler().schedule() is None


def test_admits_up_to_max_seqs_and_the_rest_wait() -> None:
    sched = make_scheduler(max_seqs=2)
    seqs = [make_seq(i, 3) for i in range(5)]
    for seq in seqs:
        sched.add(seq)
    batch = next_batch(sched)
    assert batch.is_prefill
    assert batch.seqs == seqs[:2]
    assert sched.num_running == 2
    assert list(sched.waiting) == seqs[2:]
    assert all(s.status is SequenceStatus.WAITING for s in seqs[2:])


def test_running_sequences_decode_together() -> None:
    sched = make_scheduler()
    a, b = make_seq(0, 3), make_seq(1, 5)
    sched.add(a)
    sched.add(b)
    fake_run(next_batch(sched))
    batch = next_batch(sched)
    assert not batch.is_prefill
    assert batch.seqs == [a, b]


def test_waiting_request_joins_at_the_next_step_when_a_slot_frees() -> None:
    sched = make_scheduler(max_seqs=2)
    a, b, c = make_seq(0, 3), make_seq(1, 3), make_seq(2, 3)
    for seq in (a, b, c):
        sched.add(seq)
    fake_run(next_batch(sched))
    fake_run(next_batch(sched))
    sched.finish(a, "stop")
    joined = next_batch(sched)
    assert joined.is_prefill and joined.seqs == [c]
    fake_run(joined)
    after = next_batch(sched)
    assert not after.is_prefill and after.seqs == [b, c]


def test_prefill_token_budget_defers_the_next_prompt() -> None:
    sched = make_scheduler(max_prefill_tokens=10)
    a, b = make_seq(0, 6), make_seq(1, 6)
    sched.add(a)
    sched.add(b)
    first = next_batch(sched)
    assert first.seqs == [a]
    fake_run(first)
    second = next_batch(sched)
    assert second.is_prefill and second.seqs == [b]


def test_prefill_budget_packs_prompts_that_fit() -> None:
    sched = make_scheduler(max_prefill_tokens=10)
    seqs = [make_seq(0, 4), make_seq(1, 6), make_seq(2, 1)]
    for seq in seqs:
        sched.add(seq)
    batch = next_batch(sched)
    assert batch.seqs == seqs[:2]


def test_a_prompt_over_the_budget_still_runs_alone() -> None:
    sched = make_scheduler(max_prefill_tokens=10)
    big = make_seq(0, 30)
    sched.add(big)
    batch = next_batch(sched)
    assert batch.seqs == [big]


def test_admission_waits_for_kv_blocks() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)
    a, b = make_seq(0, 8), make_seq(1, 8)
    sched.add(a)
    sched.add(b)
    batch = next_batch(sched)
    assert batch.seqs == [a]
    assert list(sched.waiting) == [b]


def test_finish_frees_blocks_at_once() -> None:
    sched = make_scheduler(num_blocks=16)
    seq = make_seq(0, 9)
    sched.add(seq)
    sched.schedule()
    assert sched.blocks.num_free_blocks == 12
    sched.finish(seq, "abort")
    assert sched.blocks.num_free_blocks == 15
    assert seq.block_table == []
    assert seq.finish_reason == "abort"
    assert seq.is_finished
    assert not sched.has_work


def test_finish_removes_a_waiting_sequence() -> None:
    sched = make_scheduler(max_seqs=1)
    a, b = make_seq(0, 3), make_seq(1, 3)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(b, "abort")
    assert sched.num_waiting == 0
    assert sched.running == [a]


def test_finish_twice_keeps_the_first_reason() -> None:
    sched = make_scheduler()
    seq = make_seq(0, 3)
    sched.add(seq)
    sched.schedule()
    sched.finish(seq, "length")
    sched.finish(seq, "abort")
    assert seq.finish_reason == "length"
    assert sched.blocks.num_free_blocks == sched.blocks.num_usable_blocks


def test_decode_grows_the_block_table_at_a_block_boundary() -> None:
    sched = make_scheduler(block_size=4)
    seq = make_seq(0, 4)
    sched.add(seq)
    fake_run(next_batch(sched))
    assert len(seq.block_table) == 1
    sched.schedule()
    assert len(seq.block_table) == 2


def test_out_of_blocks_in_decode_preempts_the_newest() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4)
    old, new = make_seq(0, 8), make_seq(1, 8)
    sched.add(old)
    sched.add(new)
    fake_run(next_batch(sched))
    batch = next_batch(sched)
    assert not batch.is_prefill and batch.seqs == [old]
    assert sched.num_preemptions == 1
    assert new.status is SequenceStatus.WAITING
    assert new.block_table == [] and new.num_cached_tokens == 0
    assert len(old.block_table) == 3


def test_preempted_sequence_waits_ahead_of_later_arrivals() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4, max_seqs=2)
    old, new, late = make_seq(0, 8), make_seq(1, 8), make_seq(2, 2)
    for seq in (old, new, late):
        sched.add(seq)
    fake_run(next_batch(sched))
    sched.schedule()
    assert list(sched.waiting) == [new, late]


def test_preempted_sequence_is_readmitted_with_its_output_once_blocks_free() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4)
    old, new = make_seq(0, 8), make_seq(1, 8)
    sched.add(old)
    sched.add(new)
    fake_run(next_batch(sched))
    sched.schedule()
    sched.finish(old, "stop")
    batch = next_batch(sched)
    assert batch.is_prefill and batch.seqs == [new]
    assert len(new) == 9
    assert len(new.block_table) == 3
    assert new.status is SequenceStatus.RUNNING


def test_no_sequence_ever_holds_block_zero() -> None:
    sched = make_scheduler(num_blocks=6, block_size=2, max_seqs=3)
    for i in range(6):
        sched.add(make_seq(i, 3))
    for _ in range(30):
        batch = sched.schedule()
        if batch is None:
            break
        assert all(0 not in s.block_table for s in sched.running)
        fake_run(batch)
        for seq in batch.seqs:
            if seq.num_output_tokens >= 3:
                sched.finish(seq, "length")
    assert not sched.has_work
    assert sched.blocks.num_free_blocks == 5
