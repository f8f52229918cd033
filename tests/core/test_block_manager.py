from __future__ import annotations

import pytest

from core.block_manager import BlockManager
from core.params import SamplingParams
from core.sequence import Sequence


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
