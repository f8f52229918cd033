"""The embedding batcher: inputs of requests that arrive together share forward passes.

One worker thread owns the encoder. Each wake-up it takes every waiting request (after a short
gathering window), sorts all their inputs by length so rows of similar length are padded
together, cuts them into batches bounded by rows and padded tokens, encodes batch after batch,
and answers each request as soon as its last row is done. Requests that come in meanwhile wait
for the next round, so under load batches fill up by themselves. Plain Python around one
``encode`` callable (the seam tests replace).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import EngineUnavailableError, InferError

log = logging.getLogger("infermcp.embeddings")

# (rows of token ids) -> one vector per row; an EncoderRunner's ``encode``.
EncodeFn = Callable[[list[list[int]]], Sequence[Any] | np.ndarray]


@dataclass
class _Job:
    inputs: list[list[int]]
    future: concurrent.futures.Future[np.ndarray]
    rows: list[Any] = field(default_factory=list)
    num_done: int = 0


@dataclass(frozen=True)
class BatcherStats:
    num_batches: int
    num_encoded: int
    num_waiting: int
    max_batch_rows: int
    is_alive: bool
    error: str | None


def plan_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Group input indices into batches: longest first, so each batch pads to its first row;
    a batch holds at most ``max_rows`` rows and ``max_tokens`` padded tokens (but at least one
    row, however long)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if (current is not None and len(current) < max_rows
                and (len(current) + 1) * lengths[current[0]] <= max_tokens):
            current.append(index)
        else:
            batches.append([index])
    return batches


class EmbeddingBatcher:
    """Thread-backed batching front of an encoder, with an asyncio API."""

    def __init__(self, encode: EncodeFn, *, max_batch_rows: int = 32,
                 max_batch_tokens: int = 8192, gather_s: float = 0.002) -> None:
        self._encode = encode
        self.max_batch_rows = max_batch_rows
        self.max_batch_tokens = max_batch_tokens
        self._gather_s = gather_s
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._num_batches = self._num_encoded = self._max_rows_seen = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="infermcp-embed", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stats(self) -> BatcherStats:
        with self._cond:
            waiting = sum(len(job.inputs) for job in self._jobs)
        alive = self._thread is not None and self._thread.is_alive() and not self._stopping
        return BatcherStats(self._num_batches, self._num_encoded, waiting, self._max_rows_seen,
                            alive and self._error is None, self._error)

    def submit(self, inputs: list[list[int]]) -> concurrent.futures.Future[np.ndarray]:
        """Queue ``inputs`` (token-id rows); the future gets a (len(inputs), dim) array."""
        if self._stopping or self._error is not None:
            raise EngineUnavailableError(f"the encoder is not running: {self._error or 'stopping'}")
        job = _Job(inputs, concurrent.futures.Future(), [None] * len(inputs))
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    async def encode(self, inputs: list[list[int]]) -> np.ndarray:
        """Encode ``inputs`` together with whatever else is waiting; cancellable."""
        return await asyncio.wrap_future(self.submit(inputs))

    def _loop(self) -> None:
        try:
            while True:
                jobs = self._next_jobs()
                if jobs is None:
                    break
                self._run_round(jobs)
        except Exception as exc:  # the worker must never die silently
            log.exception("embedding worker failed")
            self._error = f"{type(exc).__name__}: {exc}"
        finally:
            self._fail_waiting(EngineUnavailableError(
                f"the encoder is not running: {self._error or 'the server is shutting down'}"))

    def _next_jobs(self) -> list[_Job] | None:
        """Wait for work, give late arrivals ``gather_s`` to join, take every live job."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
        if self._gather_s:
            time.sleep(self._gather_s)
        with self._cond:
            jobs, self._jobs = self._jobs, []
        return [job for job in jobs if job.future.set_running_or_notify_cancel()]

    def _run_round(self, jobs: list[_Job]) -> None:
        items = [(job, row) for job in jobs for row in range(len(job.inputs))]
        lengths = [len(job.inputs[row]) for job, row in items]
        for batch in plan_batches(lengths, self.max_batch_rows, self.max_batch_tokens):
            members = [items[i] for i in batch]
            live = [(job, row) for job, row in members if not job.future.done()]
            if not live:
                continue
            try:
                vectors = self._encode([job.inputs[row] for job, row in live])
            except Exception as exc:
                log.exception("encoding a batch failed")
                self._fail(live, exc)
                continue
            self._num_batches += 1
            self._num_encoded += len(live)
            self._max_rows_seen = max(self._max_rows_seen, len(live))
            for (job, row), vector in zip(live, vectors, strict=True):
                job.rows[row] = vector
                job.num_done += 1
                if job.num_done == len(job.inputs):
                    job.future.set_result(np.stack(job.rows))

    def _fail(self, members: list[tuple[_Job, int]], exc: Exception) -> None:
        error = exc if isinstance(exc, InferError) else InferError(
            f"encoding failed: {type(exc).__name__}: {exc}")
        for job, _ in members:
            if not job.future.done():
                job.future.set_exception(error)

    def _fail_waiting(self, error: InferError) -> None:
        with self._cond:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
