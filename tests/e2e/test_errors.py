"""Every bad request gets OpenAI's error envelope with the right status."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Server

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def post(server: Server, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60, **kwargs)


def assert_envelope(r: httpx.Response, status: int, code: str | None = None,
                    param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_malformed_json(server: Server) -> None:
    r = httpx.post(f"{server.base_url}{CHAT}", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert_envelope(r, 400, "invalid_json")


def test_wrong_content_type(server: Server) -> None:
    r = httpx.post(f"{server.base_url}{CHAT}", content=b"messages=hi",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert_envelope(r, 400, "invalid_content_type")


def test_body_not_an_object(server: Server) -> None:
    assert_envelope(post(server, CHAT, [1, 2]), 400)


def test_missing_messages(server: Server) -> None:
    assert_envelope(post(server, CHAT, {"model": "default"}), 400,
                    "missing_required_parameter", "messages")


def test_missing_prompt(server: Server) -> None:
    assert_envelope(post(server, "/v1/completions", {"model": "default"}), 400, param="prompt")


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", "hot"), ("temperature", -0.5), ("temperature", 2.5), ("top_p", 0),
    ("top_p", 1.5), ("n", 0), ("max_tokens", 0), ("top_logprobs", 21), ("min_p", 2),
    ("presence_penalty", 3), ("messages", "hi"), ("stop", 5), ("stream", "yes"),
])
def test_out_of_range_or_wrong_type(server: Server, field: str, value: Any) -> None:
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 1, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    assert_envelope(post(server, CHAT, body), 400, param=field)


def test_completion_logprobs_over_20(server: Server) -> None:
    body = {"model": "default", "prompt": "x", "max_tokens": 1, "logprobs": 21}
    assert_envelope(post(server, "/v1/completions", body), 400, param="logprobs")


def test_bad_role(server: Server) -> None:
    body = {"messages": [{"role": "robot", "content": "x"}], "max_tokens": 1}
    assert_envelope(post(server, CHAT, body), 400, param="messages[0].role")


def test_image_part_on_text_model(server: Server) -> None:
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 1}
    assert_envelope(post(server, CHAT, body), 400)


@pytest.mark.parametrize(("path", "extra", "param"), [
    ("/v1/completions", {"suffix": "end"}, "suffix"),
    ("/v1/completions", {"best_of": 2}, "best_of"),
])
def test_unsupported_shape_changing_fields(server: Server, path: str, extra: dict[str, Any],
                                           param: str) -> None:
    body = {"model": "default", "max_tokens": 1, **extra}
    body.update({"messages": MESSAGES} if path == CHAT else {"prompt": "x"})
    assert_envelope(post(server, path, body), 400, "unsupported_parameter", param)


def test_unknown_model_is_404(server: Server, client: openai.OpenAI) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 1}
    error = assert_envelope(post(server, CHAT, body), 404, "model_not_found", "model")
    assert server.model_id in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)


def test_context_length_exceeded(server: Server, client: openai.OpenAI) -> None:
    long_text = "word " * 1500
    body = {"messages": [{"role": "user", "content": long_text}], "max_tokens": 4}
    error = assert_envelope(post(server, CHAT, body), 400, "context_length_exceeded")
    assert "1024" in error["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="default", prompt=long_text, max_tokens=4)


def test_max_tokens_beyond_context(server: Server) -> None:
    body = {"messages": MESSAGES, "max_tokens": 5000}
    assert_envelope(post(server, CHAT, body), 400, "context_length_exceeded", "max_tokens")


def test_streaming_request_that_fails_validation_is_plain_json(server: Server) -> None:
    body = {"model": "nope", "messages": MESSAGES, "stream": True}
    r = post(server, CHAT, body)
    assert r.headers["content-type"].startswith("application/json")
    assert_envelope(r, 404, "model_not_found")


def test_unknown_route_and_method(server: Server) -> None:
    assert_envelope(httpx.get(f"{server.base_url}/v1/nothing"), 404)
    assert_envelope(httpx.get(f"{server.base_url}{CHAT}"), 405)


def test_unknown_fields_are_ignored(server: Server) -> None:
    body = {"messages": MESSAGES, "max_tokens": 1, "frobnicate": True, "store": False,
            "parallel_tool_calls": False, "best_of": 1}
    assert post(server, CHAT, body).status_code == 200
