from __future__ import annotations

from core.engine.block_manager import BlockManager
from core.engine.params import SamplingParams
from core.engine.scheduler import ScheduledBatch, Scheduler
from core.engine.sequence import Sequence, SequenceStatus


def make_seq(seq_id: int, num_tokens: int, prefix: list[int] | None = None) -> Sequence:
    """A sequence of distinct tokens (no two share a prefix) unless ``prefix`` is given."""
    own = list(range(1000 * (seq_id + 1), 1000 * (seq_id + 1) + num_tokens))
    return Sequence(seq_id, f"req-{seq_id}", (prefix or []) + own, SamplingParams(), 16)


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_seqs: int = 8,
                   max_batched_tokens: int = 1024) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), max_seqs, max_batched_tokens)


def next_batch(sched: Scheduler) -> ScheduledBatch:
    batch = sched.schedule()
    assert batch is not None
    return batch


def fake_run(sched: Scheduler, batch: ScheduledBatch) -> None:
    """What the engine does with a batch: cache its new tokens, sample one for each sequence
    whose chunk reached its end."""
    sampling = batch.sampling
    sched.computed(batch)
    for seq in sampling:
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
    fake_run(sched, next_batch(sched))
    batch = next_batch(sched)
    assert not batch.is_prefill
    assert batch.seqs == [a, b]


def test_waiting_request_joins_at_the_next_step_when_a_slot_frees() -> None:
    sched = make_scheduler(max_seqs=2)
    a, b, c = make_seq(0, 3), make_seq(1, 3), make_seq(2, 3)
    for seq in (a, b, c):
        sched.add(seq)
    fake_run(sched, next_batch(sched))
    fake_run(sched, next_batch(sched))
    sched.finish(a, "stop")
    joined = next_batch(sched)
    assert joined.seqs == [c, b] and joined.num_new_tokens == [3, 1]
    fake_run(sched, joined)
    after = next_batch(sched)
    assert not after.is_prefill and after.seqs == [b, c]


def test_token_budget_chunks_the_prompt_that_does_not_fit() -> None:
    sched = make_scheduler(max_batched_tokens=10)
    a, b = make_seq(0, 6), make_seq(1, 6)
    sched.add(a)
    sched.add(b)
    first = next_batch(sched)
    assert first.seqs == [a, b] and first.num_new_tokens == [6, 4]
    assert first.sampling == [a]
    fake_run(sched, first)
    second = next_batch(sched)
    assert second.seqs == [b, a] and second.num_new_tokens == [2, 1]
    assert second.sampling == [b, a]


def test_budget_packs_prompts_that_fit_and_admits_no_empty_chunk() -> None:
    sched = make_scheduler(max_batched_tokens=10)
    seqs = [make_seq(0, 4), make_seq(1, 6), make_seq(2, 1)]
    for seq in seqs:
        sched.add(seq)
    batch = next_batch(sched)
    assert batch.seqs == seqs[:2]
    assert list(sched.waiting) == seqs[2:]


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode() -> None:
    sched = make_scheduler(max_batched_tokens=10)
    short = make_seq(0, 3)
    sched.add(short)
    fake_run(sched, next_batch(sched))
    big = make_seq(1, 30)
    sched.add(big)
    chunks = []
    for _ in range(4):
        batch = next_batch(sched)
        assert short in batch.sampling  # the running stream never waits for the prompt
        chunks.append(batch.num_new_tokens[batch.seqs.index(big)])
        fake_run(sched, batch)
    assert chunks == [9, 9, 9, 3]
    assert big.num_cached_tokens == 30 and len(big) == 31


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
    fake_run(sched, next_batch(sched))
    assert len(seq.block_table) == 1
    sched.schedule()
    assert len(seq.block_table) == 2


def test_out_of_blocks_in_decode_preempts_the_newest() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4)
    old, new = make_seq(0, 8), make_seq(1, 8)
    sched.add(old)
    sched.add(new)
    fake_run(sched, next_batch(sched))
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
    fake_run(sched, next_batch(sched))
    sched.schedule()
    assert list(sched.waiting) == [new, late]


def test_preempted_sequence_is_readmitted_with_its_output_once_blocks_free() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4)
    old, new = make_seq(0, 8), make_seq(1, 8)
    sched.add(old)
    sched.add(new)
    fake_run(sched, next_batch(sched))
    sched.schedule()
    sched.finish(old, "stop")
    batch = next_batch(sched)
    assert batch.is_prefill and batch.seqs == [new]
    assert len(new) == 9
    assert len(new.block_table) == 3
    assert new.status is SequenceStatus.RUNNING
    # its own first block came back from the prefix cache; its usage still reports what the
    # cache held when it first arrived: nothing
    assert new.num_cached_tokens >= 4 and new.num_prefix_cached_tokens == 0


def test_no_sequence_ever_holds_block_zero() -> None:
    sched = make_scheduler(num_blocks=6, block_size=2, max_seqs=3)
    for i in range(6):
        sched.add(make_seq(i, 3))
    for _ in range(30):
        batch = sched.schedule()
        if batch is None:
            break
        assert all(0 not in s.block_table for s in sched.running)
        fake_run(sched, batch)
        for seq in batch.seqs:
            if seq.num_output_tokens >= 3:
                sched.finish(seq, "length")
    assert not sched.has_work
    assert sched.blocks.num_free_blocks == 5


def test_an_admitted_prompt_reuses_the_cached_prefix_and_counts_the_hit() -> None:
    sched = make_scheduler(block_size=4)
    system = list(range(8))
    first = make_seq(0, 3, prefix=system)
    sched.add(first)
    fake_run(sched, next_batch(sched))
    second = make_seq(1, 3, prefix=system)
    sched.add(second)
    batch = next_batch(sched)
    assert batch.num_new_tokens[batch.seqs.index(second)] == 3
    assert second.block_table[:2] == first.block_table[:2]
    assert (sched.num_prefix_queries, sched.num_prefix_hits) == (22, 8)
    assert (first.num_prefix_cached_tokens, second.num_prefix_cached_tokens) == (0, 8)


def test_a_sequence_that_cannot_be_admitted_gives_back_its_prefix_blocks() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)
    first = make_seq(0, 1, prefix=list(range(4)))
    sched.add(first)
    fake_run(sched, next_batch(sched))
    sched.finish(first, "stop")
    hog = make_seq(1, 8)
    sched.add(hog)
    fake_run(sched, next_batch(sched))  # holds 2 of the 3 blocks (3 after its first token)
    late = make_seq(2, 9, prefix=list(range(4)))
    sched.add(late)
    next_batch(sched)
    assert list(sched.waiting) == [late] and late.block_table == []
    sched.finish(hog, "stop")
    assert sched.blocks.num_free_blocks == 3
