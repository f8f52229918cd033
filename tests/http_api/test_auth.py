"""Bearer-key checking: constant-time comparison, and the key never reaches a log record."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.testclient import TestClient

from http_api import auth
from http_api.app import create_app
from http_api.auth import BearerAuth
from tests.http_api.fakes import FakeEngine, FakeModel
from tests.http_api.test_app import registry, wait_until_loaded

KEY = "sk-test-9f2c41d7e0b3a8"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def authed_client() -> TestClient:
    app = create_app(registry(lambda: FakeModel(engine=FakeEngine())))
    return TestClient(BearerAuth(app, KEY))  # type: ignore[arg-type]


def test_keys_are_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = auth.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with authed_client() as client:
        wait_until_loaded(client)
        assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code \
            == 401
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code \
            == 200
    assert len(calls) == 2


def test_the_key_never_appears_in_log_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with authed_client() as client:
        wait_until_loaded(client)
        for key in (KEY, KEY + "x", KEY[:-1], "wrong"):
            headers = {"Authorization": f"Bearer {key}"}
            client.post("/v1/chat/completions", json=CHAT, headers=headers)
            client.post("/v1/chat/completions", json={"bad": 1}, headers=headers)
    assert caplog.records  # something was logged at debug level
    assert all(KEY[:-1] not in record.getMessage() for record in caplog.records)
    assert KEY[:-1] not in caplog.text
