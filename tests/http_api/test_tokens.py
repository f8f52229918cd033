"""POST /tokenize and /detokenize over fake models (the fake tokenizer: one token a
character, ids are code points)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from http_api.app import create_app
from tests.http_api.fakes import FakeEmbeddingModel, FakeModel, fake_registry, running


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with running(create_app(fake_registry(FakeModel(), FakeEmbeddingModel()))) as client:
        yield client


def test_prompt(client: TestClient) -> None:
    r = client.post("/tokenize", json={"prompt": "hey"})
    assert r.json() == {"model": "fake-model", "tokens": [104, 101, 121], "count": 3,
                        "max_model_len": 64}


def test_messages_go_through_the_chat_prompt(client: TestClient) -> None:
    r = client.post("/tokenize", json={"model": "fake-model", "messages": [
        {"role": "system", "content": "ab"}, {"role": "user", "content": "c"}]})
    assert r.json()["tokens"] == [97, 98, 99]


def test_an_embedding_model_tokenizes_prompts_only(client: TestClient) -> None:
    r = client.post("/tokenize", json={"model": "fake-encoder", "prompt": "a"})
    assert r.json() == {"model": "fake-encoder", "tokens": [97], "count": 1,
                        "max_model_len": 32}
    r = client.post("/tokenize", json={"model": "fake-encoder",
                                       "messages": [{"role": "user", "content": "a"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"


def test_detokenize(client: TestClient) -> None:
    r = client.post("/detokenize", json={"tokens": [104, 105]})
    assert r.json() == {"model": "fake-model", "prompt": "hi"}


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, 400,
     "prompt"),
    ("/tokenize", {"model": "fake-model"}, 400, "prompt"),
    ("/tokenize", {"prompt": 5}, 400, "prompt"),
    ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
    ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/detokenize", {"tokens": [0x110000]}, 400, "tokens"),
    ("/detokenize", {"tokens": ["a"]}, 400, "tokens[0]"),
    ("/detokenize", {}, 400, "tokens"),
])
def test_errors_use_the_envelope(client: TestClient, path: str, body: dict[str, Any],
                                 status: int, param: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status
    assert r.json()["error"]["param"] == param
    if status == 404:
        assert r.json()["error"]["code"] == "model_not_found"
