from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.engine.async_engine import AdmissionLimits, AsyncEngine, RequestStream
from core.engine.faults import Faults
from core.engine.grammar import GrammarMatcher
from core.engine.output_processor import OutputProcessor
from core.engine.outputs import EngineRequest, EngineStats, RequestOutput
from core.engine.params import GrammarSpec, SamplingParams
from core.errors import (
    ContextLengthError,
    EngineUnavailableError,
    InferError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
)
from tests.core.tiny_model import VOCAB_SIZE, CharTokenizer, EngineFactory

MAX_SEQ_LEN = 64  # the async_engine fixture's context
PROMPT = [5, 90, 11, 12, 7]


def request(request_id: str, max_tokens: int | None = 5, prompt: list[int] = PROMPT,
            truncate: bool = False, **params: Any) -> EngineRequest:
    sampling = SamplingParams(temperature=0, ignore_eos=True, max_tokens=max_tokens, **params)
    return EngineRequest(request_id, prompt, sampling, truncate)


async def drain(stream: RequestStream) -> list[RequestOutput]:
    return [out async for out in stream]


async def wait_until_idle(engine: AsyncEngine) -> EngineStats:
    """The engine thread frees an aborted sequence at its next step; give it up to 10 s."""
    for _ in range(1000):
        stats = engine.stats()
        if stats.num_running == stats.num_waiting == 0:
            return stats
        await asyncio.sleep(0.01)
    return engine.stats()


@pytest.fixture
def idle_engine(make_engine: EngineFactory) -> AsyncEngine:
    """An engine whose thread is not started: enough for the checks made before submission."""
    llm = make_engine(max_seq_len=MAX_SEQ_LEN)
    return AsyncEngine(llm, OutputProcessor(llm, CharTokenizer()))


async def test_generate_streams_outputs_that_end_with_a_finish_reason(
        async_engine: AsyncEngine) -> None:
    outputs = await drain(async_engine.generate(request("a", max_tokens=5)))
    assert len(outputs) == 5
    assert [o.finish_reason for o in outputs] == [None] * 4 + ["length"]
    token_ids = [t for o in outputs for t in o.token_ids]
    assert "".join(o.text for o in outputs) == CharTokenizer().decode(token_ids)
    assert outputs[-1].num_prompt_tokens == len(PROMPT)
    assert outputs[-1].num_output_tokens == 5


async def test_concurrent_streams_each_get_their_own_outputs(async_engine: AsyncEngine) -> None:
    alone = await drain(async_engine.generate(request("solo", max_tokens=6)))
    both = await asyncio.gather(drain(async_engine.generate(request("x", max_tokens=6))),
                                drain(async_engine.generate(request("y", max_tokens=3,
                                                                    prompt=[1, 2]))))
    assert [o.token_ids for o in both[0]] == [o.token_ids for o in alone]
    assert {o.request_id for o in both[1]} == {"y"}
    assert len(both[1]) == 3


async def test_stop_string_ends_the_stream_without_the_stop(async_engine: AsyncEngine) -> None:
    full = "".join(o.text for o in await drain(async_engine.generate(request("a", 8))))
    stop = full[3:5]
    outputs = await drain(async_engine.generate(request("b", 8, stop=(stop,))))
    assert "".join(o.text for o in outputs) == full[:full.index(stop)]
    assert outputs[-1].finish_reason == "stop"
    stats = await wait_until_idle(async_engine)
    assert stats.num_free_blocks == stats.num_total_blocks


async def test_closing_a_stream_early_frees_its_sequence(async_engine: AsyncEngine) -> None:
    stream = async_engine.generate(request("a", max_tokens=50))
    first = await anext(stream)
    await stream.aclose()
    stats = await wait_until_idle(async_engine)
    assert first.finish_reason is None
    assert stats.num_running == 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_aborted == 1


async def test_leaving_an_async_with_block_early_frees_its_sequence(
        async_engine: AsyncEngine) -> None:
    async with async_engine.generate(request("a", max_tokens=50)) as stream:
        async for _ in stream:
            break
    stats = await wait_until_idle(async_engine)
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_aborted == 1


async def test_cancelling_the_consumer_frees_its_sequence(async_engine: AsyncEngine) -> None:
    stream = async_engine.generate(request("a", max_tokens=None))
    await anext(stream)
    task = asyncio.ensure_future(drain(stream))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await wait_until_idle(async_engine)
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_aborted == 1


async def test_generate_rejects_an_over_long_prompt_before_streaming(
        async_engine: AsyncEngine) -> None:
    with pytest.raises(ContextLengthError):
        async_engine.generate(request("a", max_tokens=5, prompt=[1] * MAX_SEQ_LEN))
    assert async_engine.stats().num_waiting == 0


async def test_generate_rejects_token_ids_outside_the_vocabulary(
        async_engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        async_engine.generate(request("a", prompt=[1, VOCAB_SIZE]))
    assert info.value.param == "prompt"


async def test_generate_with_truncate_keeps_the_newest_tokens(async_engine: AsyncEngine) -> None:
    prompt = [i % VOCAB_SIZE for i in range(100)]
    stream = async_engine.generate(request("a", max_tokens=4, prompt=prompt, truncate=True))
    outputs = await drain(stream)
    assert stream.prompt_token_ids == prompt[-(MAX_SEQ_LEN - 4):]
    assert outputs[-1].num_prompt_tokens == MAX_SEQ_LEN - 4
    assert outputs[-1].num_output_tokens == 4


def test_fit_prompt_passes_a_prompt_that_fits(idle_engine: AsyncEngine) -> None:
    assert idle_engine.fit_prompt([1, 2, 3], 10, truncate=False) == ([1, 2, 3], 10)


def test_fit_prompt_without_max_tokens_budgets_the_rest_of_the_context(
        idle_engine: AsyncEngine) -> None:
    assert idle_engine.fit_prompt([1, 2, 3], None, truncate=False) == ([1, 2, 3], MAX_SEQ_LEN - 3)


def test_fit_prompt_rejects_an_over_long_prompt(idle_engine: AsyncEngine) -> None:
    with pytest.raises(ContextLengthError) as info:
        idle_engine.fit_prompt(list(range(60)), 10, truncate=False)
    assert info.value.code == "context_length_exceeded"


def test_fit_prompt_truncates_to_the_newest_tokens_leaving_room_for_max_tokens(
        idle_engine: AsyncEngine) -> None:
    prompt = list(range(100))
    fitted, budget = idle_engine.fit_prompt(prompt, 10, truncate=True)
    assert fitted == prompt[-(MAX_SEQ_LEN - 10):]
    assert budget == 10


def test_fit_prompt_truncates_leaving_one_token_without_max_tokens(
        idle_engine: AsyncEngine) -> None:
    prompt = list(range(100))
    fitted, budget = idle_engine.fit_prompt(prompt, None, truncate=True)
    assert fitted == prompt[-(MAX_SEQ_LEN - 1):]
    assert budget == 1


def test_fit_prompt_rejects_max_tokens_that_fill_the_context(idle_engine: AsyncEngine) -> None:
    with pytest.raises(ContextLengthError) as info:
        idle_engine.fit_prompt([1], MAX_SEQ_LEN, truncate=True)
    assert info.value.param == "max_tokens"


def test_fit_prompt_rejects_an_empty_prompt(idle_engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        idle_engine.fit_prompt([], 5, truncate=False)
    assert info.value.param == "prompt"


async def test_shutdown_ends_streams_in_flight_with_engine_unavailable(
        async_engine: AsyncEngine) -> None:
    stream = async_engine.generate(request("a", max_tokens=None))
    await anext(stream)
    async_engine.shutdown()
    with pytest.raises(EngineUnavailableError):
        async with asyncio.timeout(2):  # guards against the hang, not a timing check
            await drain(stream)


# --- admission control, timeouts and faults -------------------------------------------------


def limited_engine(make_engine: EngineFactory, grammars: Any = None, faults: Faults | None = None,
                   **limits: Any) -> AsyncEngine:
    """A started engine of 2 running sequences with the given AdmissionLimits."""
    llm = make_engine(max_seqs=2, max_seq_len=MAX_SEQ_LEN)
    engine = AsyncEngine(llm, OutputProcessor(llm, CharTokenizer()), grammars,
                         AdmissionLimits(**limits), faults)
    engine.start()
    return engine


@pytest.fixture
def engines() -> Iterator[list[AsyncEngine]]:
    """Engines a test starts; shut down afterwards."""
    started: list[AsyncEngine] = []
    yield started
    for engine in started:
        engine.shutdown()


async def test_a_full_queue_refuses_at_once_with_retry_after(
        make_engine: EngineFactory, engines: list[AsyncEngine]) -> None:
    engine = limited_engine(make_engine, max_queue=1, retry_after=3)
    engines.append(engine)
    streams = [engine.generate(request(f"r{i}", max_tokens=None)) for i in range(3)]  # 2 + 1
    with pytest.raises(OverloadedError) as info:
        engine.generate(request("one-too-many"))
    assert info.value.status_code == 429 and info.value.retry_after == 3
    assert info.value.error_type == "requests" and info.value.code == "rate_limit_exceeded"
    assert engine.stats().num_rejected == 1
    for stream in streams:
        await stream.aclose()
    await wait_until_idle(engine)
    assert len(await drain(engine.generate(request("after", max_tokens=3)))) == 3


async def test_a_request_larger_than_the_capacity_is_a_400(
        make_engine: EngineFactory, engines: list[AsyncEngine]) -> None:
    engine = limited_engine(make_engine, max_queue=1)
    engines.append(engine)
    with pytest.raises(InvalidRequestError) as info:
        engine.check_capacity(4)
    assert info.value.status_code == 400 and "at most 2 at once" in info.value.message
    engine.check_capacity(3)  # fits


async def test_a_request_that_waits_too_long_times_out(
        make_engine: EngineFactory, engines: list[AsyncEngine]) -> None:
    engine = limited_engine(make_engine, request_timeout=1e-6)
    engines.append(engine)
    with pytest.raises(RequestTimeoutError) as info:
        await drain(engine.generate(request("late", max_tokens=5)))
    assert info.value.status_code == 504 and info.value.code == "request_timeout"
    assert "waiting in the queue" in info.value.message
    stats = await wait_until_idle(engine)
    assert stats.num_timed_out == 1 and stats.num_free_blocks == stats.num_total_blocks


async def test_a_request_that_runs_too_long_times_out_after_some_output(
        make_engine: EngineFactory, engines: list[AsyncEngine],
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = limited_engine(make_engine, request_timeout=0.3)
    engines.append(engine)
    step = engine._engine.step

    def slow_step() -> Any:
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(engine._engine, "step", slow_step)
    outputs: list[RequestOutput] = []
    with pytest.raises(RequestTimeoutError) as info:
        async for out in engine.generate(request("slow", max_tokens=None)):
            outputs.append(out)
    assert outputs and "generated tokens" in info.value.message
    stats = await wait_until_idle(engine)
    assert stats.num_free_blocks == stats.num_total_blocks and stats.is_alive


async def test_a_failed_step_fails_every_stream_then_refuses_new_requests(
        make_engine: EngineFactory, engines: list[AsyncEngine]) -> None:
    engine = limited_engine(make_engine, faults=Faults(step_error_at=3))
    engines.append(engine)
    streams = [engine.generate(request(f"r{i}", max_tokens=20)) for i in range(2)]
    for stream in streams:
        with pytest.raises(InferError) as info:
            async with asyncio.timeout(10):  # guards against the hang, not a timing check
                await drain(stream)
        assert info.value.status_code == 500 and "injected fault" in info.value.message
    stats = engine.stats()
    assert not stats.is_alive and stats.error is not None and "MemoryError" in stats.error
    with pytest.raises(EngineUnavailableError) as refused:
        engine.generate(request("new"))
    assert refused.value.status_code == 503 and "MemoryError" in refused.value.message


async def test_an_engine_thread_that_dies_is_reported_and_refuses_work(
        make_engine: EngineFactory, engines: list[AsyncEngine],
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = limited_engine(make_engine)
    engines.append(engine)

    def die() -> Any:
        raise SystemExit("gone")

    monkeypatch.setattr(engine._engine, "step", die)
    with pytest.raises(InferError):
        async with asyncio.timeout(10):
            await drain(engine.generate(request("a")))
    assert not engine.stats().is_alive
    with pytest.raises(EngineUnavailableError):
        engine.generate(request("b"))


async def test_a_request_failing_in_its_own_processing_leaves_its_batch_alone(
        make_engine: EngineFactory, engines: list[AsyncEngine],
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = limited_engine(make_engine)
    engines.append(engine)
    solo = await drain(engine.generate(request("solo", max_tokens=8)))
    process = engine._processor.process

    def process_or_fail(outputs: list[Any]) -> list[RequestOutput]:
        if outputs[0].seq.request_id == "bad" and outputs[0].seq.num_output_tokens == 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "broken tokenizer")
        return process(outputs)

    monkeypatch.setattr(engine._processor, "process", process_or_fail)
    good, bad = await asyncio.gather(drain(engine.generate(request("good", max_tokens=8))),
                                     drain(engine.generate(request("bad", max_tokens=8))),
                                     return_exceptions=True)
    assert isinstance(bad, InferError) and "UnicodeDecodeError" in bad.message
    assert isinstance(good, list)
    assert [o.token_ids for o in good] == [o.token_ids for o in solo]
    stats = await wait_until_idle(engine)
    assert stats.is_alive and stats.num_failed == 1
    assert stats.num_free_blocks == stats.num_total_blocks


class _RaisingMatcher:
    """An llguidance matcher stand-in whose mask computation blows up."""

    def compute_bitmask(self) -> bytes:
        raise RuntimeError("matcher panicked")

    def is_error(self) -> bool:
        return False

    def is_stopped(self) -> bool:
        return False

    def consume_token(self, token_id: int) -> bool:
        return True


class _RaisingGrammars:
    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        return GrammarMatcher(_RaisingMatcher())  # type: ignore[arg-type]


async def test_a_failing_grammar_fails_only_its_own_request(
        make_engine: EngineFactory, engines: list[AsyncEngine]) -> None:
    engine = limited_engine(make_engine, grammars=_RaisingGrammars())
    engines.append(engine)
    solo = await drain(engine.generate(request("solo", max_tokens=8)))
    constrained = request("bad", max_tokens=8, grammar=GrammarSpec("regex", "a+"))
    good, bad = await asyncio.gather(drain(engine.generate(request("good", max_tokens=8))),
                                     drain(engine.generate(constrained)),
                                     return_exceptions=True)
    assert isinstance(bad, InferError) and "matcher panicked" in bad.message
    assert bad.status_code == 500
    assert isinstance(good, list)
    assert [o.token_ids for o in good] == [o.token_ids for o in solo]
    stats = await wait_until_idle(engine)
    assert stats.is_alive and stats.num_free_blocks == stats.num_total_blocks


async def test_logit_bias_for_a_token_outside_the_vocabulary_is_a_400(
        async_engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        async_engine.generate(request("a", logit_bias=((VOCAB_SIZE, 1.0),)))
    assert info.value.param == "logit_bias"


@pytest.mark.parametrize("token_id", [VOCAB_SIZE, -1])
async def test_a_stop_token_id_outside_the_vocabulary_is_a_400(async_engine: AsyncEngine,
                                                               token_id: int) -> None:
    """Found by the fuzzing: with min_tokens it indexed the logits and failed the batch."""
    with pytest.raises(InvalidRequestError) as info:
        async_engine.generate(request("a", stop_token_ids=(token_id,), min_tokens=2))
    assert info.value.param == "stop_token_ids"
