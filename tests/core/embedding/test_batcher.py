"""The embedding batcher over a fake encoder: batch planning, batching across requests,
answers in order, failures and cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from core.embedding.batcher import EmbeddingBatcher, plan_batches
from core.errors import EngineUnavailableError, InferError


class FakeEncoder:
    """Each row's vector is [sum of ids, length]; records the batches; can hold a batch."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_on: int | None = None

    def __call__(self, batch: list[list[int]]) -> np.ndarray:
        self.started.set()
        self.gate.wait(5)
        self.batches.append(batch)
        if self.fail_on is not None and any(self.fail_on in row for row in batch):
            raise RuntimeError("bad row")
        return np.array([[sum(row), len(row)] for row in batch], dtype=np.float32)


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def batcher(encoder: FakeEncoder) -> Iterator[EmbeddingBatcher]:
    b = EmbeddingBatcher(encoder, max_batch_rows=4, max_batch_tokens=64, gather_s=0)
    b.start()
    yield b
    b.shutdown()


def test_plan_sorts_by_length_and_respects_both_limits() -> None:
    lengths = [3, 10, 2, 10, 5, 1]
    assert plan_batches(lengths, max_rows=8, max_tokens=100) == [[1, 3, 4, 0, 2, 5]]
    assert plan_batches(lengths, max_rows=2, max_tokens=100) == [[1, 3], [4, 0], [2, 5]]
    # padded size = rows x the batch's first (longest) row
    assert plan_batches(lengths, max_rows=8, max_tokens=20) == [[1, 3], [4, 0, 2, 5]]
    assert plan_batches([50], max_rows=8, max_tokens=20) == [[0]]  # too long still runs alone
    assert plan_batches([], max_rows=8, max_tokens=20) == []


async def test_one_request_answers_in_input_order(batcher: EmbeddingBatcher,
                                                  encoder: FakeEncoder) -> None:
    rows = [[1], [2, 2, 2], [3, 3]]
    out = await batcher.encode(rows)
    assert out.tolist() == [[1, 1], [6, 3], [6, 2]]
    assert len(encoder.batches) == 1
    assert encoder.batches[0] == [[2, 2, 2], [3, 3], [1]]  # longest first


async def test_requests_waiting_together_share_a_forward_pass(batcher: EmbeddingBatcher,
                                                              encoder: FakeEncoder) -> None:
    encoder.gate.clear()  # hold the first batch while three more requests arrive
    first = asyncio.ensure_future(batcher.encode([[9]]))
    await asyncio.to_thread(encoder.started.wait, 5)
    others = [asyncio.ensure_future(batcher.encode([[i, i]])) for i in range(3)]
    await asyncio.sleep(0.05)
    encoder.gate.set()
    results = await asyncio.gather(first, *others)
    assert [r.tolist() for r in results] == [[[9, 1]], [[0, 2]], [[2, 2]], [[4, 2]]]
    assert [len(b) for b in encoder.batches] == [1, 3]
    stats = batcher.stats()
    assert (stats.num_batches, stats.num_encoded, stats.max_batch_rows) == (2, 4, 3)


async def test_a_big_request_is_split_by_the_row_limit(batcher: EmbeddingBatcher,
                                                       encoder: FakeEncoder) -> None:
    out = await batcher.encode([[i] for i in range(10)])
    assert out[:, 0].tolist() == list(range(10))
    assert [len(b) for b in encoder.batches] == [4, 4, 2]


async def test_a_failing_batch_fails_its_requests_only(batcher: EmbeddingBatcher,
                                                       encoder: FakeEncoder) -> None:
    encoder.fail_on = 13
    with pytest.raises(InferError, match="encoding failed: RuntimeError: bad row"):
        await batcher.encode([[13]])
    out = await batcher.encode([[1, 2]])  # the worker lives on
    assert out.tolist() == [[3, 2]]
    assert batcher.stats().is_alive


async def test_a_cancelled_request_is_skipped(batcher: EmbeddingBatcher,
                                              encoder: FakeEncoder) -> None:
    encoder.gate.clear()
    first = asyncio.ensure_future(batcher.encode([[1]]))
    await asyncio.to_thread(encoder.started.wait, 5)
    gone = asyncio.ensure_future(batcher.encode([[7, 7, 7]]))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    encoder.gate.set()
    await first
    assert await batcher.encode([[2]]) is not None
    assert [7, 7, 7] not in [row for batch in encoder.batches for row in batch]


async def test_shutdown_refuses_new_work(encoder: FakeEncoder) -> None:
    b = EmbeddingBatcher(encoder, gather_s=0)
    b.start()
    b.shutdown()
    assert not b.stats().is_alive
    with pytest.raises(EngineUnavailableError):
        b.submit([[1]])
