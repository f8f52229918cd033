"""The request handlers' shared pieces: the usage tally of a generation, the check of a
prompt's images against the model's input modalities."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest
from PIL import Image

from core.chat.images import ImageData, image_part
from core.chat.tools import plan_tools
from core.engine.outputs import RequestOutput
from core.engine.params import SamplingParams
from core.errors import InvalidRequestError
from core.serving.handlers import ChatRequest, Generation, Usage, chat_prompt, prepare_chat
from tests.http_api.fakes import FakeModel, fake_registry


class ScriptedStream:
    """A stream of outputs with the counts the engine reports, one output a step."""

    def __init__(self, prompt: int, cached: int, outputs: int) -> None:
        self.outputs = [RequestOutput("r", text="x", num_prompt_tokens=prompt,
                                      num_cached_tokens=cached, num_output_tokens=i + 1,
                                      finish_reason="stop" if i == outputs - 1 else None)
                        for i in range(outputs)]

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if not self.outputs:
            raise StopAsyncIteration
        return self.outputs.pop(0)

    async def __aenter__(self) -> ScriptedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def abort(self) -> None:
        return None


def generation() -> Generation:
    """Two prompts (5 tokens, 2 cached; 7 tokens, none cached), n = 2 choices each."""
    streams = [ScriptedStream(5, 2, 3), ScriptedStream(5, 2, 1), ScriptedStream(7, 0, 2),
               ScriptedStream(7, 0, 4)]
    return Generation(cast(Any, None), cast(Any, streams), "cmpl-1", n=2)


EXPECTED = Usage(prompt_tokens=12, completion_tokens=10, cached_tokens=2)


def test_usage_counts_each_prompt_once_and_every_choice() -> None:
    async def stream() -> Usage:
        gen = generation()
        assert gen.usage() == Usage()
        async for _ in gen.outputs():
            pass
        return gen.usage()

    assert anyio.run(stream) == EXPECTED


def test_collect_tallies_the_same() -> None:
    async def collect() -> Usage:
        gen = generation()
        await gen.collect()
        return gen.usage()

    assert anyio.run(collect) == EXPECTED


def test_openai_usage_object() -> None:
    assert EXPECTED.total_tokens == 22
    assert EXPECTED.as_openai() == {"prompt_tokens": 12, "completion_tokens": 10,
                                    "total_tokens": 22,
                                    "prompt_tokens_details": {"cached_tokens": 2}}


def test_a_prompt_with_an_image_for_a_model_that_reads_text_is_a_400() -> None:
    image = image_part(ImageData(b"png", "image/png", Image.new("RGB", (1, 1)), "0" * 64))
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}]
    plan = plan_tools(None, None, None)
    with pytest.raises(InvalidRequestError, match="'fake-model' reads only text") as info:
        chat_prompt(cast(Any, FakeModel()), messages, plan, None)
    assert info.value.param == "messages[0].content[1]"
    seer = FakeModel(input_modalities=("text", "image"))
    assert chat_prompt(cast(Any, seer), messages, plan, None) == [ord(c) for c in "a<image 1x1>"]


async def test_prepare_chat_refuses_before_it_loads_and_passes_text_through() -> None:
    models = fake_registry(FakeModel())
    models.start()
    models.settled.wait(5)
    text = ChatRequest([{"role": "user", "content": "hi"}], SamplingParams())
    assert await prepare_chat(models, text) is text
    url = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    seen = ChatRequest([{"role": "user", "content": [url]}], SamplingParams())
    with pytest.raises(InvalidRequestError, match="input modalities: text"):
        await prepare_chat(models, seen)
