from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.async_engine import AsyncEngine, RequestStream
from core.errors import ContextLengthError, EngineUnavailableError, InvalidRequestError
from core.output_processor import OutputProcessor
from core.outputs import EngineRequest, EngineStats, RequestOutput
from core.params import SamplingParams
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
