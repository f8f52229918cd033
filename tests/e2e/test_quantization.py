"""POST /re_isq on the real server: re-quantize while it serves, then back to the default."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.e2e.conftest import Server

# Greedy answers to "What is the capital of France?" start at a near tie under int4 ("L'Étoile"
# against "The", 0.005 logit apart), which rounding noise in the kernels tips either way. This
# question's answer ("The capital of France is Paris.") leads by at least 0.8 logit at each of its
# first 8 tokens in f16 and int4.
QUESTION = [{"role": "user", "content": "Name the capital of France."}]


def re_isq(server: Server, ggml_type: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/re_isq", json={"ggml_type": ggml_type}, timeout=120)


def card(server: Server) -> dict[str, object]:
    cards = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    return next(c for c in cards if c["id"] == server.model_id)


@dataclass
class Answer:
    text: str
    logprobs: list[float]
    cached_tokens: int  # prompt tokens whose keys and values came from the prefix cache


def ask(client: openai.OpenAI) -> Answer:
    r = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=24,
                                       temperature=0, logprobs=True)
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    return Answer(choice.message.content or "", [t.logprob for t in choice.logprobs.content],
                  r.usage.prompt_tokens_details.cached_tokens or 0)


def answer_afresh(client: openai.OpenAI) -> str:
    """The answer right after a re-quantization: no key or value the old weights computed for
    the prompt may be reused."""
    answer = ask(client)
    assert answer.cached_tokens == 0
    return answer.text


@pytest.fixture
def default_format_after(server: Server) -> Iterator[None]:
    yield
    assert re_isq(server, "auto").status_code == 200


def test_re_isq_round_trip_keeps_answers_coherent(server: Server, client: openai.OpenAI,
                                                  default_format_after: None) -> None:
    before = card(server)
    assert before["quantization"] == "int4"  # the file's own: the bundled GGUF is Q4_1
    assert before["architecture"] == "llama"
    assert before["kv_cache_dtype"] == "float16"  # beside 4-bit weights, as llama.cpp keeps it
    first = ask(client)
    assert "Paris" in first.text

    r = re_isq(server, "Q8_0")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["quantization"] == "int8" and body["model"] == server.model_id
    assert body["weight_bytes"] != before["weight_bytes"]
    assert card(server)["quantization"] == "int8"
    assert "Paris" in answer_afresh(client)
    assert ask(client).cached_tokens >= 16  # asked again, the new weights' prefix is reused

    assert re_isq(server, "f16").json()["quantization"] == "f16"
    assert "Paris" in answer_afresh(client)

    r = re_isq(server, "f32")
    assert r.json()["quantization"] == "none"
    assert r.json()["weight_bytes"] > int(before["weight_bytes"]) * 2  # type: ignore[call-overload]
    assert "Paris" in answer_afresh(client)

    r = re_isq(server, "auto")
    assert r.json()["quantization"] == "int4"
    assert r.json()["weight_bytes"] == before["weight_bytes"]
    # back to the same weights: the same answer, to the same probabilities
    last = ask(client)
    assert last.cached_tokens == 0 and last.text == first.text
    assert last.logprobs == pytest.approx(first.logprobs, abs=1e-3)


def test_a_stream_in_flight_finishes_across_a_re_isq(server: Server, client: openai.OpenAI,
                                                     default_format_after: None) -> None:
    stream = client.completions.create(model="default", prompt="Once upon a time",
                                       max_tokens=128, stream=True, temperature=0,
                                       extra_body={"min_tokens": 128})
    chunks = iter(stream)
    first = next(chunks)
    swapped: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: swapped.append(re_isq(server, "int8")))
    thread.start()
    rest = list(chunks)
    thread.join()
    assert swapped[0].status_code == 200
    assert rest[-1].choices[0].finish_reason == "length"
    text = first.choices[0].text + "".join(c.choices[0].text for c in rest if c.choices)
    assert len(text) > 128


def test_an_unknown_type_is_a_400_listing_the_accepted_ones(server: Server) -> None:
    before = card(server)
    r = re_isq(server, "q3_k")
    assert r.status_code == 400
    error = r.json()["error"]
    assert "q4k" in error["message"] and error["param"] == "ggml_type"
    assert card(server) == before
