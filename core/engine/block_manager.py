"""KV-cache block bookkeeping in plain Python: which fixed-size blocks each sequence owns, and
which full blocks hold a known token prefix (prefix caching).

A full block is named by a hash of its tokens and of every token before it, so two sequences
that start with the same tokens (a shared system prompt) can share the blocks that hold them.
Blocks are reference-counted; a block nobody holds goes back to the free pool but keeps its
contents and name until it is handed out again, so a later request can still reuse it. The
least recently freed block is handed out first, and a sequence frees its blocks tail first, so
the shared heads of prompts are the last to go.

Block 0 is reserved as the zeroed "null" block that padded attention reads point at, so it is
never handed out.
"""

from __future__ import annotations

from collections import OrderedDict

from core.engine.sequence import Sequence


class BlockManager:
    """Hands out KV blocks of ``block_size`` token slots from a pool of ``num_blocks``."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
                 ) -> None:
        if num_blocks < 2:
            raise ValueError("need at least 2 KV blocks (block 0 is reserved)")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self._ref_count = [0] * num_blocks
        self._cached: dict[int, int] = {}  # prefix hash -> block holding those tokens
        # block -> (hash, tokens and image digests: Sequence.block_key)
        self._block_key: dict[int, tuple[int, tuple[int, ...]]] = {}

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
            block, _ = self._free.popitem(last=False)
            self._forget(block)
            self._ref_count[block] = 1
            seq.block_table.append(block)

    def reuse_prefix(self, seq: Sequence) -> int:
        """Give a sequence with no blocks yet the cached blocks of its longest known prefix of
        full blocks (always leaving its last token to compute); returns the tokens reused."""
        if seq.block_table:
            raise RuntimeError("reuse_prefix needs a sequence without blocks")
        bs = self.block_size
        seq.block_hashes.clear()
        if not self.enable_prefix_caching:
            return 0
        full_blocks = (len(seq) - 1) // bs
        parent = 0
        for i in range(full_blocks):
            tokens = seq.block_key(i, bs)
            key = hash((parent, tokens))
            block = self._cached.get(key)
            if block is None or self._block_key[block] != (key, tokens):
                break
            self._free.pop(block, None)
            self._ref_count[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(key)
            parent = key
        seq.num_cached_tokens = len(seq.block_table) * bs
        return seq.num_cached_tokens

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Name every block of ``seq`` that is now full and computed, so others can reuse it."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        while (len(seq.block_hashes) + 1) * bs <= seq.num_cached_tokens:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else 0
            tokens = seq.block_key(i, bs)
            key = hash((parent, tokens))
            block = seq.block_table[i]
            if key not in self._cached:
                self._forget(block)
                self._cached[key] = block
                self._block_key[block] = (key, tokens)
            seq.block_hashes.append(key)

    def forget_prefixes(self) -> None:
        """Unname every block, so no later request reuses what the cache holds: it was computed
        by weights that are gone (a re-quantization). Blocks in use stay with their sequences."""
        self._cached.clear()
        self._block_key.clear()

    def free(self, seq: Sequence) -> None:
        """Release every block of ``seq`` (tail first); unshared ones return to the pool."""
        for block in reversed(seq.block_table):
            self._ref_count[block] -= 1
            if self._ref_count[block] == 0:
                self._free[block] = None
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_cached_tokens = 0

    def slot(self, seq: Sequence, position: int) -> int:
        """The flat cache slot that holds ``seq``'s token at ``position``."""
        block = seq.block_table[position // self.block_size]
        return block * self.block_size + position % self.block_size

    def slots(self, seq: Sequence, start: int, stop: int) -> list[int]:
        """The flat cache slots of ``seq``'s tokens at positions ``start``..``stop - 1``."""
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]

    def _forget(self, block: int) -> None:
        key = self._block_key.pop(block, None)
        if key is not None and self._cached.get(key[0]) == block:
            del self._cached[key[0]]

