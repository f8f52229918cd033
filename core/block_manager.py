"""KV-cache block bookkeeping in plain Python: which fixed-size blocks each sequence owns.

Block 0 is reserved as the zeroed "null" block that padded attention reads point at, so it is
never handed out.
"""

from __future__ import annotations

from collections import deque

from core.sequence import Sequence


class BlockManager:
    """Hands out KV blocks of ``block_size`` token slots from a pool of ``num_blocks``."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError("need at least 2 KV blocks (block 0 is reserved)")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(1, num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether ``seq`` can grow to hold ``num_tokens`` tokens."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        return missing <= len(self._free)

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grow ``seq``'s block table to hold ``num_tokens`` tokens."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        if missing > len(self._free):
            raise MemoryError("out of KV blocks")
        for _ in range(missing):
            seq.block_table.append(self._free.popleft())

    def free(self, seq: Sequence) -> None:
        """Return every block of ``seq`` to the pool."""
        self._free.extend(seq.block_table)
        seq.block_table.clear()
        seq.num_cached_tokens = 0

    def slot(self, seq: Sequence, position: int) -> int:
        """The flat cache slot that holds ``seq``'s token at ``position``."""
        block = seq.block_table[position // self.block_size]
        return block * self.block_size + position % self.block_size
