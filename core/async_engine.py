"""The engine API every front end uses: submit, stream outputs, abort.

The model loop runs in its own thread. Requests and aborts cross into it through a locked inbox;
outputs cross back to asyncio through a per-request queue. A request whose consumer goes away
(disconnect, cancel) is aborted and its KV blocks are freed at the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.engine import LLMEngine
from core.errors import ContextLengthError, EngineUnavailableError, InferError, InvalidRequestError
from core.grammar import GrammarCompiler
from core.output_processor import OutputProcessor
from core.outputs import EngineRequest, EngineStats, RequestOutput
from core.sequence import Sequence

log = logging.getLogger("infermcp.engine")
T = TypeVar("T")


@dataclass
class _Collector:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput] = field(default_factory=asyncio.Queue)

    def put(self, output: RequestOutput) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, output)


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
                 grammars: GrammarCompiler | None = None) -> None:
        self._engine = engine
        self._grammars = grammars
        self._processor = processor
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._new: list[tuple[Sequence, _Collector]] = []
        self._aborts: set[str] = set()
        self._calls: list[tuple[Callable[[LLMEngine], Any], concurrent.futures.Future[Any]]] = []
        self._live: dict[str, tuple[Sequence, _Collector]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: str | None = None
        self._num_aborted = 0
        self._num_finished = 0

    @property
    def max_seq_len(self) -> int:
        return self._engine.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self._engine.runner.config.vocab_size

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="infermcp-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stats(self) -> EngineStats:
        sched, blocks = self._engine.scheduler, self._engine.blocks
        with self._lock:
            pending = len(self._new)
        return EngineStats(
            num_running=sched.num_running, num_waiting=sched.num_waiting + pending,
            num_free_blocks=blocks.num_free_blocks, num_total_blocks=blocks.num_usable_blocks,
            num_preemptions=sched.num_preemptions, num_aborted=self._num_aborted,
            num_finished=self._num_finished, is_alive=self._error is None and not self._stopping,
            error=self._error, num_prefix_queries=sched.num_prefix_queries,
            num_prefix_hits=sched.num_prefix_hits)

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
        ids, engine down), so a front end can answer with an error before it starts streaming.
        """
        if self._error is not None or self._stopping:
            raise EngineUnavailableError(f"the engine is not running: {self._error or 'stopping'}")
        prompt, max_tokens = self.fit_prompt(request.prompt_token_ids, request.params.max_tokens,
                                             request.truncate)
        if max(prompt) >= self.vocab_size or min(prompt) < 0:
            raise InvalidRequestError(f"prompt token ids must be in [0, {self.vocab_size})",
                                      param="prompt")
        seq = self._engine.new_sequence(request.request_id, prompt, request.params, max_tokens)
        if request.params.grammar is not None:
            if self._grammars is None:
                raise InvalidRequestError("this model does not support grammars", param="grammar")
            seq.constraint = self._grammars.matcher(request.params.grammar)
        collector = _Collector(asyncio.get_running_loop())
        with self._lock:
            self._new.append((seq, collector))
        self._wakeup.set()
        return RequestStream(self, request.request_id, collector, prompt)

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run ``fn(engine)`` on the model thread between two steps (running sequences pause
        for it, none fail) and return its result or raise its exception."""
        if self._error is not None or self._stopping or self._thread is None:
            raise EngineUnavailableError(f"the engine is not running: {self._error or 'stopped'}")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._calls.append((fn, future))
        self._wakeup.set()
        return await asyncio.wrap_future(future)

    def abort(self, request_id: str) -> None:
        """Stop ``request_id`` and free its sequence at the next step."""
        with self._lock:
            self._aborts.add(request_id)
        self._wakeup.set()

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._drain_inbox()
                if not self._engine.scheduler.has_work:
                    self._wakeup.wait(timeout=0.5)
                    self._wakeup.clear()
                    continue
                self._publish(self._processor.process(self._engine.step()))
        except Exception as exc:  # the model thread must never die silently
            log.exception("engine step failed")
            self._error = f"{type(exc).__name__}: {exc}"
            self._fail_all(EngineUnavailableError(f"the engine failed: {self._error}"))
        else:
            self._fail_all(EngineUnavailableError("the server is shutting down"))

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
        for seq, collector in new:
            self._live[seq.request_id] = (seq, collector)
            self._processor.add(seq)
            self._engine.add(seq)
        for request_id in aborts:
            entry = self._live.pop(request_id, None)
            if entry is not None:
                self._engine.finish(entry[0], "abort")
                self._processor.discard(entry[0])
                self._num_aborted += 1

    def _publish(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            entry = self._live.get(output.request_id)
            if entry is None:
                continue
            if output.finished:
                del self._live[output.request_id]
                self._num_finished += 1
            entry[1].put(output)

    def _fail_all(self, error: InferError) -> None:
        with self._lock:
            pending = [c for _, c in self._new]
            self._new = []
        for _, collector in self._live.values():
            collector.put(RequestOutput(request_id="", error=error))
        for collector in pending:
            collector.put(RequestOutput(request_id="", error=error))
        with self._lock:
            calls, self._calls = self._calls, []
        for _, future in calls:
            future.set_exception(error)
        self._live.clear()
