"""POST /re_isq on the real server: re-quantize while it serves, then back to the default."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import Server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def re_isq(server: Server, ggml_type: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/re_isq", json={"ggml_type": ggml_type}, timeout=120)


def card(server: Server) -> dict[str, object]:
    cards = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    return next(c for c in cards if c["id"] == server.model_id)


def answer(client: openai.OpenAI) -> str:
    r = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=24,
                                       temperature=0)
    return r.choices[0].message.content or ""


@pytest.fixture
def default_format_after(server: Server) -> Iterator[None]:
    yield
    assert re_isq(server, "auto").status_code == 200


def test_re_isq_round_trip_keeps_answers_coherent(server: Server, client: openai.OpenAI,
                                                  default_format_after: None) -> None:
    before = card(server)
    assert before["quantization"] == "f16"  # the default on x86: float16 weights
    assert "Paris" in answer(client)

    r = re_isq(server, "Q8_0")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["quantization"] == "int8" and body["model"] == server.model_id
    assert body["weight_bytes"] < int(before["weight_bytes"]) * 0.7  # type: ignore[call-overload]
    assert card(server)["quantization"] == "int8"
    assert "Paris" in answer(client)

    assert re_isq(server, "4").json()["quantization"] == "int4"
    assert "Paris" in answer(client)  # with a 4-bit LM head it answered in French

    r = re_isq(server, "f32")
    assert r.json()["quantization"] == "none"
    assert r.json()["weight_bytes"] > int(before["weight_bytes"]) * 1.5  # type: ignore[call-overload]
    assert "Paris" in answer(client)

    r = re_isq(server, "auto")
    assert r.json()["quantization"] == "f16"
    assert r.json()["weight_bytes"] == before["weight_bytes"]
    assert "Paris" in answer(client)


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
