"""Hostile and oversized input against the real server: each a clear 4xx, quickly, and the
server keeps serving; a request whose grammar fails mid-way fails alone."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MAX_SEQ_LEN, Server

HI = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


def post(server: Server, body: dict[str, Any] | bytes, route: str = "chat/completions"
         ) -> httpx.Response:
    url = f"{server.base_url}/v1/{route}"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers=JSON, timeout=60)
    return httpx.post(url, json=body, timeout=60)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "/tmp",
                                  "~/.cache/infermcp", "..", "HuggingFaceTB/../../etc/passwd"])
@pytest.mark.parametrize(("route", "body"), [
    ("chat/completions", {"messages": HI, "max_tokens": 1}),
    ("completions", {"prompt": "hi", "max_tokens": 1}),
    ("embeddings", {"input": "hi"}),
])
def test_model_ids_are_names_never_paths(server: Server, name: str, route: str,
                                         body: dict[str, Any]) -> None:
    error = error_of(post(server, {**body, "model": name}, route), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"


@pytest.mark.parametrize(("raw", "what"), [
    (b"[" * 50_000 + b"]" * 50_000, "nests deeper"),
    (b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}', "UTF-8"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "Infinity"),
    (b'{"messages": [{"role": "user", "content": "\\udfff"}]}', "surrogate"),
])
def test_malformed_json_is_400(server: Server, raw: bytes, what: str) -> None:
    error = error_of(post(server, raw), 400)
    assert what in error["message"]


def test_a_body_over_8_mib_is_413(server: Server) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (9 << 20)}]}
    assert error_of(post(server, big), 413)["code"] == "request_too_large"


@pytest.mark.parametrize(("extra", "param"), [
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"logit_bias": {"10000000": 5}}, "logit_bias"),
    ({"n": 17}, "n"),
    ({"messages": HI * 2049}, "messages"),
    ({"grammar": {"type": "lark", "value": 'start: "unterminated'}}, "grammar"),
    ({"grammar": {"type": "regex", "value": "(a|b)*" * 4000}}, "grammar"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": "nope"}}},
     "response_format"),
])
def test_over_limit_or_broken_fields_are_400(server: Server, extra: dict[str, Any],
                                             param: str) -> None:
    error = error_of(post(server, {"messages": HI, "max_tokens": 4, **extra}), 400)
    assert error["param"] == param


def test_max_tokens_beyond_the_context_names_the_context_length(server: Server) -> None:
    error = error_of(post(server, {"messages": HI, "max_tokens": MAX_SEQ_LEN}), 400)
    assert error["code"] == "context_length_exceeded" and str(MAX_SEQ_LEN) in error["message"]


def test_an_over_long_prompt_is_400_unless_truncated(server: Server) -> None:
    body = {"prompt": "word " * (MAX_SEQ_LEN + 50), "max_tokens": 4}
    error = error_of(post(server, body, "completions"), 400)
    assert error["code"] == "context_length_exceeded"
    assert post(server, {**body, "truncate_sequence": True}, "completions").status_code == 200


async def test_a_grammar_failing_mid_generation_fails_only_its_request(
        uncached_server: Server) -> None:
    """This regex compiles, then exceeds llguidance's lexer limits while generating. (On the
    server without prefix caching: the good request's tokens are compared with its solo run's.)"""
    server = uncached_server
    base = {"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 24,
            "temperature": 0}
    bad = {**base, "grammar": {"type": "regex", "value": "(a{100}){100}{100}"}}
    async with httpx.AsyncClient(base_url=f"{server.base_url}/v1", timeout=120) as client:
        solo = (await client.post("/chat/completions", json=base)).json()
        good, failed = await asyncio.gather(client.post("/chat/completions", json=base),
                                            client.post("/chat/completions", json=bad))
    assert good.status_code == 200
    assert good.json()["choices"] == solo["choices"]  # its batch neighbour was unaffected
    error = error_of(failed, 500)
    assert "grammar failed" in error["message"]
    health = httpx.get(f"{server.base_url}/health", timeout=10)
    assert health.status_code == 200  # one bad request never takes the engine down
