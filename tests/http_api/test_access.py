"""Request ids on every response, one access-log line a request, and CORS (none by default)."""

from __future__ import annotations

import logging
import re

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from http_api.access import request_id_of
from http_api.app import create_app
from tests.http_api.fakes import fake_registry, running

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
HEX_ID = re.compile(r"[0-9a-f]{32}")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


@pytest.mark.parametrize(("given", "kept"), [
    ("abc-123", True), ("0f1e2d3c-aaaa-bbbb-cccc-0123456789ab", True), ("req:7/a.b_c", True),
    ("", False), ("has space", False), ("x" * 129, False), ("é", False), ("-leading", False)])
def test_request_id_is_kept_only_when_sane(given: str, kept: bool) -> None:
    rid = request_id_of(given)
    assert (rid == given) is kept
    if not kept:
        assert HEX_ID.fullmatch(rid)


def test_ids_are_echoed_or_generated_on_every_kind_of_response() -> None:
    app = create_app(fake_registry(), routes=[Route("/boom", boom)], api_key="k")
    auth = {"Authorization": "Bearer k"}
    with running(app) as client:
        ok = client.post("/v1/chat/completions", json=CHAT, headers={**auth,
                                                                     "x-request-id": "r-1"})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "r-1"
        fresh = client.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert HEX_ID.fullmatch(fresh.headers["x-request-id"])
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                           headers={**auth, "x-request-id": "r-sse"}) as r:
            assert r.headers["x-request-id"] == "r-sse"
        errors = [
            client.post("/v1/chat/completions", json={**CHAT, "model": "x"}, headers=auth),
            client.post("/v1/chat/completions", json={"messages": 1}, headers=auth),
            client.get("/v1/models"),  # 401: no key
            client.get("/boom", headers=auth),  # 500
            client.get("/nope", headers=auth),
        ]
    assert [e.status_code for e in errors] == [404, 400, 401, 500, 404]
    for e in errors:
        assert HEX_ID.fullmatch(e.headers["x-request-id"]), e.status_code
        assert set(e.json()["error"]) == {"message", "type", "param", "code"}


def test_one_access_line_per_request_with_tokens(caplog: pytest.LogCaptureFixture) -> None:
    with running(create_app(fake_registry())) as client:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="infermcp.access"):
            client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "a1"})
            with client.stream("POST", "/v1/completions", json={"prompt": "abcd",
                                                                 "stream": True},
                               headers={"x-request-id": "a2"}) as r:
                list(r.iter_lines())
            client.post("/tokenize", json={"prompt": "xyz"}, headers={"x-request-id": "a3"})
            client.post("/v1/completions", json={}, headers={"x-request-id": "a4"})
    lines = [r.getMessage() for r in caplog.records if r.name == "infermcp.access"]
    assert len(lines) == 4
    fields = [dict(kv.split("=", 1) for kv in line.split()) for line in lines]
    assert fields[0]["method"] == "POST" and fields[0]["path"] == "/v1/chat/completions"
    assert fields[0]["status"] == "200" and float(fields[0]["latency_ms"]) >= 0
    assert [f["request_id"] for f in fields] == ["a1", "a2", "a3", "a4"]
    assert (fields[0]["prompt_tokens"], fields[0]["completion_tokens"]) == ("2", "3")
    assert (fields[1]["prompt_tokens"], fields[1]["completion_tokens"]) == ("4", "3")
    assert fields[2]["prompt_tokens"] == "3" and "completion_tokens" not in fields[2]
    assert fields[3]["status"] == "400" and "prompt_tokens" not in fields[3]


def test_a_hostile_path_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    forged = "/v1/responses/x%0A2026-01-01 INFO infermcp.access: method=GET path=/admin"
    with running(create_app(fake_registry())) as client:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="infermcp.access"):
            assert client.get(forged).status_code == 404
            assert client.get("/v1/responses/caf%C3%A9 x").status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "infermcp.access"]
    assert len(lines) == 2 and not any("\n" in line for line in lines)
    assert "path=/v1/responses/x%0A2026-01-01%20INFO%20infermcp.access:%20method=GET" in lines[0]
    assert "path=/v1/responses/caf%C3%A9%20x " in lines[1]


PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def test_no_origin_is_allowed_cross_origin_by_default() -> None:
    with running(create_app(fake_registry())) as client:
        r = client.options("/v1/chat/completions",
                           headers={"Origin": "http://a.example", **PREFLIGHT})
        assert "access-control-allow-origin" not in r.headers
        r = client.get("/v1/models", headers={"Origin": "http://a.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_allows_listed_origins_before_the_key_check() -> None:
    app = create_app(fake_registry(), api_key="k", cors_origins=["http://a.example"])
    with running(app) as client:
        r = client.options("/v1/chat/completions",
                           headers={"Origin": "http://a.example", **PREFLIGHT})
        assert r.status_code == 200  # a preflight carries no key
        assert r.headers["access-control-allow-origin"] == "http://a.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        denied = client.options("/v1/chat/completions",
                                headers={"Origin": "http://evil.example", **PREFLIGHT})
        assert denied.status_code == 400
        assert "access-control-allow-origin" not in denied.headers
        r = client.get("/v1/models", headers={"Origin": "http://a.example",
                                              "Authorization": "Bearer k"})
        assert r.headers["access-control-allow-origin"] == "http://a.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
