from __future__ import annotations

import pytest

from core.engine.block_manager import BlockManager
from core.engine.params import SamplingParams
from core.engine.sequence import Sequence


def make_seq(seq_id: int, num_tokens: int) -> Sequence:
    return Sequence(seq_id, f"req-{seq_id}", list(range(num_tokens)), SamplingParams(), 16)


def test_allocate_rounds_up_to_whole_blocks() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(0, 5)
    blocks.allocate(seq, 5)
    assert len(seq.block_table) == 2
    assert blocks.num_free_blocks == 5


def test_allocate_only_adds_the_missing_blocks() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(0, 4)
    blocks.allocate(seq, 4)
    first = list(seq.block_table)
    blocks.allocate(seq, 4)
    blocks.allocate(seq, 5)
    assert seq.block_table[:1] == first
    assert len(seq.block_table) == 2


def test_block_zero_is_never_handed_out() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    seqs = [make_seq(i, 2) for i in range(3)]
    for seq in seqs:
        blocks.allocate(seq, 2)
    assert sorted(b for s in seqs for b in s.block_table) == [1, 2, 3]
    assert blocks.num_usable_blocks == 3


def test_allocate_past_the_pool_raises_memory_error() -> None:
    blocks = BlockManager(num_blocks=3, block_size=2)
    seq = make_seq(0, 6)
    assert not blocks.can_allocate(seq, 6)
    with pytest.raises(MemoryError):
        blocks.allocate(seq, 6)
    assert seq.block_table == []


def test_free_returns_every_block_and_resets_the_cache() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    seq = make_seq(0, 5)
    blocks.allocate(seq, 5)
    seq.num_cached_tokens = 5
    blocks.free(seq)
    assert blocks.num_free_blocks == 3
    assert seq.block_table == []
    assert seq.num_cached_tokens == 0


def test_freed_blocks_are_reused_and_block_zero_still_never_appears() -> None:
    blocks = BlockManager(num_blocks=3, block_size=2)
    for i in range(5):
        seq = make_seq(i, 4)
        blocks.allocate(seq, 4)
        assert 0 not in seq.block_table
        blocks.free(seq)
    assert blocks.num_free_blocks == 2


def test_slot_maps_a_position_into_its_block() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(0, 6)
    seq.block_table = [5, 2]
    assert blocks.slot(seq, 0) == 20
    assert blocks.slot(seq, 3) == 23
    assert blocks.slot(seq, 4) == 8
    assert blocks.slot(seq, 5) == 9


def test_a_pool_without_a_usable_block_is_rejected() -> None:
    with pytest.raises(ValueError):
        BlockManager(num_blocks=1, block_size=4)


def computed(blocks: BlockManager, seq: Sequence) -> None:
    """As after the model ran the whole sequence."""
    blocks.allocate(seq, len(seq))
    seq.num_cached_tokens = len(seq)
    blocks.cache_full_blocks(seq)


def test_a_shared_prefix_of_full_blocks_is_reused() -> None:
    blocks = BlockManager(num_blocks=16, block_size=4)
    first = Sequence(0, "a", list(range(10)), SamplingParams(), 16)
    computed(blocks, first)
    second = Sequence(1, "b", [*range(9), 99, 98], SamplingParams(), 16)
    assert blocks.reuse_prefix(second) == 8
    assert second.block_table == first.block_table[:2]
    blocks.free(first)  # still held by the second
    assert blocks.num_free_blocks == 15 - 2  # the two shared blocks


def test_forgotten_prefixes_are_not_reused_but_blocks_in_use_stay() -> None:
    blocks = BlockManager(num_blocks=16, block_size=4)
    first = Sequence(0, "a", list(range(10)), SamplingParams(), 16)
    computed(blocks, first)
    held = list(first.block_table)
    blocks.forget_prefixes()  # new weights: the cached keys and values are stale
    assert first.block_table == held
    second = Sequence(1, "b", list(range(10)), SamplingParams(), 16)
    assert blocks.reuse_prefix(second) == 0
    blocks.free(first)
    assert blocks.num_free_blocks == 15


def test_the_last_token_is_always_left_to_compute() -> None:
    blocks = BlockManager(num_blocks=16, block_size=4)
    computed(blocks, Sequence(0, "a", list(range(8)), SamplingParams(), 16))
    again = Sequence(1, "b", list(range(8)), SamplingParams(), 16)
    assert blocks.reuse_prefix(again) == 4


def test_freed_blocks_keep_their_prefix_until_handed_out_again() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    first = Sequence(0, "a", [1, 2, 3, 4, 5], SamplingParams(), 16)
    computed(blocks, first)
    blocks.free(first)
    assert blocks.num_free_blocks == 3  # cached blocks still count as free
    again = Sequence(1, "b", [1, 2, 3, 4, 9], SamplingParams(), 16)
    assert blocks.reuse_prefix(again) == 4
    blocks.free(again)
    other = Sequence(2, "c", [7, 7, 7, 7, 7, 7], SamplingParams(), 16)
    blocks.allocate(other, 6)  # takes every block: the cached prefix is evicted
    late = Sequence(3, "d", [1, 2, 3, 4, 5], SamplingParams(), 16)
    assert blocks.reuse_prefix(late) == 0


def test_a_sequence_frees_its_tail_first_so_shared_heads_live_longest() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2)
    first = Sequence(0, "a", [1, 2, 3, 4, 5, 6, 7], SamplingParams(), 16)
    computed(blocks, first)
    head = first.block_table[0]
    blocks.free(first)
    other = Sequence(1, "b", [9] * 6, SamplingParams(), 16)
    blocks.allocate(other, 6)  # 3 of the 7 free blocks: the never-used ones, then the tail
    assert head not in other.block_table
    probe = Sequence(2, "c", [1, 2, 8], SamplingParams(), 16)
    assert blocks.reuse_prefix(probe) == 2


def test_prefix_caching_can_be_switched_off() -> None:
    blocks = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    computed(blocks, Sequence(0, "a", list(range(10)), SamplingParams(), 16))
    assert blocks.reuse_prefix(Sequence(1, "b", list(range(10)), SamplingParams(), 16)) == 0
