"""Hostile and oversized requests over a fake engine: each a clear 4xx in OpenAI's envelope."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from core.chat.messages import MAX_MESSAGES
from core.engine.params import MAX_LOGIT_BIAS, MAX_STOP
from http_api.app import create_app
from http_api.body import MAX_JSON_DEPTH
from tests.http_api.fakes import FakeEngine, FakeModel
from tests.http_api.test_app import registry, wait_until_loaded

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(registry(lambda: FakeModel(engine=FakeEngine())), max_body_bytes=64 << 10)
    with TestClient(app) as client:
        wait_until_loaded(client)
        yield client


@pytest.fixture
def make_client() -> Iterator[Any]:
    """``make_client(engine)``: a client of an app over a loaded fake model."""
    clients: list[TestClient] = []

    def make(engine: FakeEngine) -> TestClient:
        client = TestClient(create_app(registry(lambda: FakeModel(engine=engine))))
        client.__enter__()
        clients.append(client)
        wait_until_loaded(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (70 << 10)}]}
    error = error_of(client.post(CHAT, json=big), 413)
    assert error["code"] == "request_too_large" and str(64 << 10) in error["message"]


def test_a_streamed_body_without_length_is_cut_at_the_limit(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}]}'

    error_of(client.post(CHAT, content=chunks(), headers=JSON), 413)


@pytest.mark.parametrize(("raw", "what"), [
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "UTF-8"),
    (b'{"messages": [], "temperature": NaN}', "NaN"),
    (b'{"messages": [], "temperature": Infinity}', "Infinity"),
    (b'{"messages": [], "temperature": -Infinity}', "Infinity"),
    (b'{"messages": [], "temperature": 1e999}', "out of range"),
    (b'{"messages": [], "seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
    (b'{"messages": [', "not valid JSON"),
    (b"[" * 30_000 + b"]" * 30_000, "nests deeper"),
])
def test_malformed_json_is_400(client: TestClient, raw: bytes, what: str) -> None:
    error = error_of(client.post(CHAT, content=raw, headers=JSON), 400)
    assert what in error["message"] and error["code"] == "invalid_json"


def test_nesting_is_limited_just_past_the_bound(client: TestClient) -> None:
    deep: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deep = {"x": deep}
    body = {"messages": HI, "metadata": deep}  # depth: body + metadata chain > the bound
    error = error_of(client.post(CHAT, json=body), 400)
    assert f"{MAX_JSON_DEPTH} levels" in error["message"]
    body["metadata"] = deep["x"]["x"]  # within the bound: an ignored field, accepted
    assert client.post(CHAT, json=body).status_code == 200


@pytest.mark.parametrize(("extra", "param"), [
    ({"messages": HI * (MAX_MESSAGES + 1)}, "messages"),
    ({"n": 17}, "n"),
    ({"logit_bias": {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
    ({"stop": [f"s{i}" for i in range(MAX_STOP + 1)]}, "stop"),
    ({"messages": [HI[0], "not an object"]}, "messages[1]"),
])
def test_over_limit_fields_are_400_naming_the_field(client: TestClient, extra: dict[str, Any],
                                                   param: str) -> None:
    error = error_of(client.post(CHAT, json={"messages": HI, **extra}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "body", "param"), [  # found by the fuzzing (tests/e2e)
    (CHAT, {"messages": HI, "top_logprobs": False}, "top_logprobs"),
    (CHAT, {"messages": HI, "max_tokens": "5"}, "max_tokens"),
    (CHAT, {"messages": HI, "max_tokens": 2.5}, "max_tokens"),
    (CHAT, {"messages": HI, "temperature": "0.5"}, "temperature"),
    (CHAT, {"messages": [{"role": 1, "content": "hi"}]}, "messages[0].role"),
    ("/v1/completions", {"prompt": "hi", "logprobs": True}, "logprobs"),
    ("/v1/responses", {"input": "hi", "max_output_tokens": True}, "max_output_tokens"),
])
def test_values_of_the_wrong_json_type_are_400_not_coerced(client: TestClient, path: str,
                                                          body: dict[str, Any],
                                                          param: str) -> None:
    error = error_of(client.post(path, json=body), 400)
    assert error["param"] == param and error["code"] == "invalid_value"


def test_an_integral_number_is_an_integer_as_json_schema_says(make_client: Any) -> None:
    engine = FakeEngine()
    body = {"messages": HI, "max_tokens": 2.0, "n": 1e0, "seed": 7.0, "temperature": 1}
    r = make_client(engine).post(CHAT, json=body)
    assert r.status_code == 200, r.text
    (request,) = engine.requests
    assert (request.params.max_tokens, request.params.seed) == (2, 7)
    assert request.params.temperature == 1.0 and isinstance(request.params.temperature, float)


PATHS = ["../../etc/passwd", "/etc/passwd", "~/.ssh/id_rsa", "..", "/tmp", "file:///etc/passwd"]
_opened: list[str] = []
_watching = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching and event == "open" and isinstance(args[0], str | bytes):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while watching


@pytest.mark.parametrize("name", PATHS)
def test_model_ids_are_names_never_paths(client: TestClient, name: str) -> None:
    global _watching
    _opened.clear()
    _watching = True
    try:
        response = client.post(CHAT, json={"model": name, "messages": HI})
    finally:
        _watching = False
    assert error_of(response, 404)["code"] == "model_not_found"
    assert not [p for p in _opened if "passwd" in p or ".ssh" in p or p in ("..", "/tmp")]


def test_a_full_queue_is_429_with_retry_after(make_client: Any) -> None:
    client = make_client(FakeEngine(overloaded=True))
    response = client.post(CHAT, json={"messages": HI})
    error = error_of(response, 429)
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "2000"
    streamed = client.post(CHAT, json={"messages": HI, "stream": True})
    assert streamed.status_code == 429  # refused before the stream starts


def test_a_draining_server_refuses_new_requests_with_503(make_client: Any) -> None:
    client = make_client(FakeEngine())
    client.app.state.models.drain()
    error = error_of(client.post(CHAT, json={"messages": HI}), 503)
    assert error["code"] == "shutting_down"
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"


def test_error_bodies_are_json_even_for_huge_inputs(client: TestClient) -> None:
    raw = json.dumps({"messages": HI, "logit_bias": {"x" * 1000: 1}}).encode()
    error = error_of(client.post(CHAT, content=raw, headers=JSON), 400)
    assert error["param"] == "logit_bias" and len(error["message"]) < 2000
