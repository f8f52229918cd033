"""The engine API every front end uses: submit, stream outputs, abort.

The model loop runs in its own thread. Requests and aborts cross into it through a locked inbox;
outputs cross back to asyncio through a per-request queue. A request whose consumer goes away
(disconnect, cancel) is aborted and its KV blocks are freed at the next step.

Admission control happens in :meth:`AsyncEngine.generate`: beyond ``max_seqs`` running plus
``max_queue`` waiting sequences a request is refused at once (429). A request older than
``request_timeout`` is ended with a 504. Failures are contained: one request whose output
processing or grammar fails ends alone with an error; a failed step ends every request in flight
with a 500, marks the engine dead (``/health`` 503 with the reason) and refuses new requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from core.engine import threads
from core.engine.faults import Faults
from core.engine.grammar import GrammarCompiler
from core.engine.llm_engine import LLMEngine, StepOutput
from core.engine.output_processor import OutputProcessor
from core.engine.outputs import EngineRequest, EngineStats, RequestOutput
from core.engine.sequence import Sequence
from core.errors import (
    ContextLengthError,
    EngineUnavailableError,
    InferError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
)

log = logging.getLogger("infermcp.engine")
T = TypeVar("T")


@dataclass
class _Collector:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput] = field(default_factory=asyncio.Queue)

    def put(self, output: RequestOutput) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, output)


@dataclass
class _Live:
    """A submitted request as the engine thread tracks it."""

    seq: Sequence
    collector: _Collector
    deadline: float | None  # time.monotonic() after which it is ended with a timeout


@dataclass(frozen=True)
class AdmissionLimits:
    """How much work one engine accepts: ``max_queue`` sequences may wait beyond the running
    batch (None: no bound); ``request_timeout`` seconds from submission to the last output
    (None: no limit)."""

    max_queue: int | None = None
    request_timeout: float | None = None
    retry_after: float = 1.0  # what a 429 suggests to wait, in seconds


class RequestStream:
    """The outputs of one submitted request. Leaving it early (``abort``, ``aclose`` or an
    ``async with`` block) stops the sequence and frees its KV cache."""

    def __init__(self, engine: AsyncEngine, request_id: str, collector: _Collector,
                 prompt_token_ids: list[int]) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self._engine = engine
        self._collector = collector
        self._finished = False
        self.on_output: Callable[[RequestOutput], None] | None = None  # sees each output (metrics)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished:
            raise StopAsyncIteration
        try:
            output = await self._collector.queue.get()
        except BaseException:
            self.abort()
            raise
        self._finished = output.finished
        if self.on_output is not None:
            self.on_output(output)
        if output.error is not None:
            raise output.error
        return output

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            self._engine.abort(self.request_id)

    async def aclose(self) -> None:
        self.abort()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.abort()


class AsyncEngine:
    """Thread-backed engine with an asyncio streaming API."""

    def __init__(self, engine: LLMEngine, processor: OutputProcessor,
                 grammars: GrammarCompiler | None = None,
                 limits: AdmissionLimits = AdmissionLimits(), faults: Faults | None = None
                 ) -> None:
        self._engine = engine
        self._grammars = grammars
        self._processor = processor
        self.limits = limits
        self._faults = faults
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._new: list[_Live] = []
        self._aborts: set[str] = set()
        self._calls: list[tuple[Callable[[LLMEngine], Any], concurrent.futures.Future[Any]]] = []
        self._live: dict[str, _Live] = {}
        self._num_in_flight = 0  # submitted and not yet ended (under _lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: str | None = None
        self._num_aborted = 0
        self._num_finished = 0
        self._num_rejected = 0
        self._num_timed_out = 0
        self._num_failed = 0

    @property
    def max_seq_len(self) -> int:
        return self._engine.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self._engine.runner.config.vocab_size

    @property
    def capacity(self) -> int | None:
        """The most sequences in the engine at once (running plus waiting); None: no bound."""
        if self.limits.max_queue is None:
            return None
        return self._engine.scheduler.max_seqs + self.limits.max_queue

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="infermcp-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the engine thread; requests in flight end with a 503 "shutting down" error."""
        with self._lock:
            self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def is_alive(self) -> bool:
        thread_ok = self._thread is None or self._thread.is_alive()
        return self._error is None and not self._stopping and thread_ok

    def stats(self) -> EngineStats:
        sched, blocks = self._engine.scheduler, self._engine.blocks
        with self._lock:
            pending = len(self._new)
        return EngineStats(
            num_running=sched.num_running, num_waiting=sched.num_waiting + pending,
            num_free_blocks=blocks.num_free_blocks, num_total_blocks=blocks.num_usable_blocks,
            num_preemptions=sched.num_preemptions, num_aborted=self._num_aborted,
            num_finished=self._num_finished, is_alive=self.is_alive,
            error=self._error or self._dead_thread(), num_rejected=self._num_rejected,
            num_timed_out=self._num_timed_out, num_failed=self._num_failed,
            num_prefix_queries=sched.num_prefix_queries, num_prefix_hits=sched.num_prefix_hits)

    def _dead_thread(self) -> str | None:
        if self._thread is not None and not self._thread.is_alive() and not self._stopping:
            return "the engine thread has stopped"
        return None

    def check_capacity(self, num_seqs: int) -> None:
        """Raise unless ``num_seqs`` more sequences may enter the engine now: a 400 if they never
        could (more than the whole capacity), a 429 with Retry-After if the queue is full."""
        capacity = self.capacity
        if capacity is None:
            return
        if num_seqs > capacity:
            raise InvalidRequestError(
                f"this request needs {num_seqs} sequences (prompts x n); this server runs at most "
                f"{self._engine.scheduler.max_seqs} at once with {self.limits.max_queue} waiting",
                param="n")
        with self._lock:
            in_flight = self._num_in_flight
        if in_flight + num_seqs > capacity:
            self._num_rejected += 1
            raise OverloadedError(
                f"the server is at capacity ({in_flight} sequences running or queued, at most "
                f"{capacity}); retry after {self.limits.retry_after:g} s",
                retry_after=self.limits.retry_after)

    def fit_prompt(self, prompt: list[int], max_tokens: int | None, truncate: bool
                   ) -> tuple[list[int], int]:
        """Check (or, with ``truncate``, shorten) a prompt; return it and the output budget.

        Truncation drops the oldest tokens while keeping room for ``max_tokens`` (or 1).
        """
        limit = self.max_seq_len
        if not prompt:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if max_tokens is not None and max_tokens >= limit:
            raise ContextLengthError(
                f"max_tokens ({max_tokens}) must be below the model's context length ({limit})",
                param="max_tokens")
        reserve = max_tokens or 1
        if len(prompt) + reserve > limit:
            if not truncate:
                raise ContextLengthError(
                    f"this model's maximum context length is {limit} tokens; the prompt has "
                    f"{len(prompt)} tokens and {reserve} more are reserved for the output. Shorten "
                    "the prompt, lower max_tokens, or set truncate_sequence to true")
            prompt = prompt[len(prompt) + reserve - limit:]
        return prompt, max_tokens or limit - len(prompt)

    def generate(self, request: EngineRequest) -> RequestStream:
        """Validate and submit ``request`` now; iterate the result for its outputs.

        Raises :class:`InferError` at once for a request that cannot run (too long, bad token
        ids, queue full, engine down), so a front end can answer with an error before it starts
        streaming.
        """
        self._check_running()
        self.check_capacity(1)
        images = request.images
        prompt, max_tokens = self.fit_prompt(request.prompt_token_ids, request.params.max_tokens,
                                             request.truncate and images is None)
        vocab = self.vocab_size
        if max(prompt) >= vocab or min(prompt) < 0:
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})",
                                      param="prompt")
        if any(not 0 <= token_id < vocab for token_id, _ in request.params.logit_bias):
            raise InvalidRequestError(f"logit_bias keys must be token ids in [0, {vocab})",
                                      param="logit_bias")
        if any(not 0 <= token_id < vocab for token_id in request.params.stop_token_ids):
            raise InvalidRequestError(f"stop_token_ids must be token ids in [0, {vocab})",
                                      param="stop_token_ids")
        seq = self._engine.new_sequence(request.request_id, prompt, request.params, max_tokens)
        if images is not None:  # each choice its own spans: their embeddings are per sequence
            seq.images = [replace(i, embeds=None) for i in images.images]
            seq.rope_positions, seq.rope_delta = images.rope_positions, images.rope_delta
        if request.params.grammar is not None:
            if self._grammars is None:
                raise InvalidRequestError("this model does not support grammars", param="grammar")
            seq.constraint = self._grammars.matcher(request.params.grammar)
        timeout = self.limits.request_timeout
        live = _Live(seq, _Collector(asyncio.get_running_loop()),
                     None if timeout is None else time.monotonic() + timeout)
        with self._lock:  # checked again under the lock, so a dying engine cannot miss it
            self._check_running()
            self._new.append(live)
            self._num_in_flight += 1
        self._wakeup.set()
        return RequestStream(self, request.request_id, live.collector, prompt)

    def _check_running(self) -> None:
        if self._error is not None:
            raise EngineUnavailableError(f"the engine failed and takes no more requests "
                                         f"({self._error}); the server needs a restart")
        if self._stopping:
            raise EngineUnavailableError("the server is shutting down", code="shutting_down")
        dead = self._dead_thread()
        if dead is not None:
            raise EngineUnavailableError(f"{dead}; the server needs a restart")

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run ``fn(engine)`` on the model thread between two steps (running sequences pause
        for it, none fail) and return its result or raise its exception."""
        if self._thread is None:
            raise EngineUnavailableError("the engine is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:  # as in generate: a dying engine cannot miss the call
            self._check_running()
            self._calls.append((fn, future))
        self._wakeup.set()
        return await asyncio.wrap_future(future)

    def abort(self, request_id: str) -> None:
        """Stop ``request_id`` and free its sequence at the next step."""
        with self._lock:
            self._aborts.add(request_id)
        self._wakeup.set()

    def _loop(self) -> None:
        governor = threads.governor()  # this thread's OpenMP thread count, fitted to the load
        try:
            while not self._stopping:
                self._drain_inbox()
                self._expire(time.monotonic())
                if not self._engine.scheduler.has_work:
                    self._wakeup.wait(timeout=0.5)
                    self._wakeup.clear()
                    continue
                if self._faults is not None:
                    self._faults.before_step()
                if governor is not None:
                    governor.tick()
                self._postprocess(self._engine.step())
        except BaseException as exc:  # the model thread must never die silently
            log.exception("engine step failed; failing every request in flight")
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self._fail_all(InferError(f"the engine failed: {self._error}"))
        else:
            self._fail_all(EngineUnavailableError("the server is shutting down",
                                                  code="shutting_down"))

    def _drain_inbox(self) -> None:
        with self._lock:
            new, self._new = self._new, []
            aborts, self._aborts = self._aborts, set()
            calls, self._calls = self._calls, []
        for fn, future in calls:
            try:
                future.set_result(fn(self._engine))
            except Exception as exc:  # the caller's error, not the engine's
                future.set_exception(exc)
        for live in new:
            self._live[live.seq.request_id] = live
            self._processor.add(live.seq)
            self._engine.add(live.seq)
        for request_id in aborts:
            if self._end(request_id) is not None:
                self._num_aborted += 1

    def _end(self, request_id: str, error: InferError | None = None) -> _Live | None:
        """Remove a live request, free its sequence, and send ``error`` if given."""
        live = self._live.pop(request_id, None)
        if live is None:
            return None
        self._engine.finish(live.seq, "abort")
        self._processor.discard(live.seq)
        with self._lock:
            self._num_in_flight -= 1
        if error is not None:
            live.collector.put(RequestOutput(request_id=request_id, error=error))
        return live

    def _expire(self, now: float) -> None:
        if self.limits.request_timeout is None:
            return
        for request_id, live in list(self._live.items()):
            if live.deadline is not None and live.deadline <= now:
                seq = live.seq
                where = "waiting in the queue" if not seq.num_output_tokens else \
                    f"after {seq.num_output_tokens} generated tokens"
                # counted first: the error wakes the request's caller, who may read the stats
                self._num_timed_out += 1
                self._end(request_id, RequestTimeoutError(
                    f"the request did not finish within the server's request timeout "
                    f"({self.limits.request_timeout:g} s); it was ended {where}"))

    def _postprocess(self, outputs: list[StepOutput]) -> None:
        """Turn each sequence's step output into text and publish it; a failure here ends
        only the sequence it belongs to."""
        for out in outputs:
            request_id = out.seq.request_id
            try:
                grammar_error = getattr(out.seq.constraint, "error", None)
                if grammar_error is not None:
                    raise InferError(f"the output grammar failed: {grammar_error}")
                output = self._processor.process([out])[0]
            except Exception as exc:
                log.exception("request %s failed; its batch goes on", request_id)
                error = exc if isinstance(exc, InferError) else \
                    InferError(f"this request failed: {type(exc).__name__}: {exc}")
                if request_id in self._live:  # counted before the error wakes its caller
                    self._num_failed += 1
                    self._end(request_id, error)
                continue
            self._publish(output)

    def _publish(self, output: RequestOutput) -> None:
        live = self._live.get(output.request_id)
        if live is None:
            return
        if output.finished:
            del self._live[output.request_id]
            self._num_finished += 1
            with self._lock:
                self._num_in_flight -= 1
        live.collector.put(output)

    def _fail_all(self, error: InferError) -> None:
        with self._lock:
            pending, self._new = self._new, []
            calls, self._calls = self._calls, []
            self._num_in_flight = 0
        for live in [*self._live.values(), *pending]:
            live.collector.put(RequestOutput(request_id=live.seq.request_id, error=error))
        for _, future in calls:
            future.set_exception(error)
        self._live.clear()
