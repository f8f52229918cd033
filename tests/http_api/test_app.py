"""The HTTP layer over a fake engine: loading states, stream failures, keep-alives."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from core.errors import ModelLoadError
from core.serving.registry import ModelEntry, ModelRegistry
from http_api.app import create_app
from tests.e2e.conftest import free_port
from tests.http_api.fakes import FakeEngine, FakeModel

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def registry(load: Any, on_error: Any = print) -> ModelRegistry:
    return ModelRegistry([ModelEntry("fake-model", "chat", load)], on_error)


def wait_until_loaded(client: TestClient) -> None:
    for _ in range(200):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("fake model never loaded")


@pytest.fixture
def make_client() -> Iterator[Any]:
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


def sse_lines(client: TestClient, body: dict[str, Any]) -> list[str]:
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return [line for line in r.iter_lines() if line]


def test_stream_failure_sends_error_event_then_done(make_client: Any) -> None:
    client = make_client(FakeEngine(fail_after=1))
    lines = sse_lines(client, CHAT)
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2] and "boom" in lines[-2]
    assert any('"Hello"' in line for line in lines)


def test_keep_alive_comments_while_waiting(make_client: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEP_ALIVE_INTERVAL", "20")
    client = make_client(FakeEngine(delay=0.15))
    lines = sse_lines(client, CHAT)
    assert ": keep-alive" in lines
    text = "".join(line for line in lines if line.startswith("data: {"))
    assert '"Hello"' in text and '" there"' in text and lines[-1] == "data: [DONE]"


def test_health_is_503_while_loading_then_200() -> None:
    release = threading.Event()

    def slow_load() -> FakeModel:
        release.wait(5)
        return FakeModel()

    with TestClient(create_app(registry(slow_load))) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        release.set()
        wait_until_loaded(client)
        assert client.get("/health").json()["model"] == "fake-model"


def test_load_failure_is_reported() -> None:
    errors: list[str] = []

    def broken() -> FakeModel:
        raise ModelLoadError("no weights")

    with TestClient(create_app(registry(broken, errors.append))) as client:
        for _ in range(200):
            if errors:
                break
            time.sleep(0.01)
        assert errors == ["no weights"]
        r = client.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert set(body.pop("cpu")) == {"threads", "cpus", "policy", "wait"}
        assert body == {"status": "error", "error": "no weights", "model": "fake-model",
                        "models": {"fake-model": {"status": "error", "kind": "chat",
                                                  "error": "no weights"}}}


def test_a_client_gone_before_its_answer_is_a_499_not_a_server_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """Found by the fuzzing: a whole (non-streamed) answer whose client timed out was logged
    as a 500 with a traceback."""
    engine = FakeEngine(delay=2.0)
    app = create_app(registry(lambda: FakeModel(engine=engine)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="info"))
    thread = threading.Thread(target=server.run)
    thread.start()
    caplog.set_level(logging.INFO)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(500):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            time.sleep(0.01)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json={**CHAT, "stream": False},
                       timeout=0.5)
        for _ in range(500):
            if engine.aborted:
                break
            time.sleep(0.01)
    finally:
        server.should_exit = True
        thread.join()
    assert len(engine.aborted) == 1  # the generation stopped
    access = [r.getMessage() for r in caplog.records if r.name == "infermcp.access"]
    assert any("path=/v1/chat/completions status=499" in line for line in access), access
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
