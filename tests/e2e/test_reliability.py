"""Overload, request timeouts, an injected engine failure, SIGTERM and API-key hygiene, each
against a real server started here for it (chat model only, to start quickly)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, free_port, launch, launch_process, log_lines, wait_ready

SMALL = ["--embedding-model", "none", "--max-seq-len", "512", "--seed", "0"]
LONG = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400,
        "ignore_eos": True, "temperature": 0, "stream": True}
EXIT_MARGIN_S = 30  # bounds a hang; not a timing check


class Stream:
    """An SSE response read event by event (the connection stays open between reads)."""

    def __init__(self, base_url: str, body: dict[str, Any], headers: dict[str, str] | None = None
                 ) -> None:
        self._cm = httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body,
                                headers=headers, timeout=120)
        self.response = self._cm.__enter__()
        self._lines = self.response.iter_lines()

    def next_event(self) -> dict[str, Any] | str | None:
        """The next data event (parsed JSON, or "[DONE]"); None when the stream has ended."""
        for line in self._lines:
            if line.startswith("data: "):
                data = line[6:]
                return data if data == "[DONE]" else dict(json.loads(data))
        return None

    def rest(self) -> list[dict[str, Any] | str]:
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def first_content(stream: Stream) -> dict[str, Any]:
    """Read until a chunk with generated text arrives."""
    while True:
        event = stream.next_event()
        assert isinstance(event, dict), event
        if any(c["delta"].get("content") for c in event["choices"]):
            return event


def chat(base_url: str, **extra: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **extra}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)


def engine(server: Server) -> dict[str, Any]:
    return dict(httpx.get(f"{server.base_url}/health", timeout=10).json()["engine"])


def wait_idle(server: Server) -> dict[str, Any]:
    for _ in range(300):
        stats = engine(server)
        if stats["running"] == stats["waiting"] == 0:
            return stats
        time.sleep(0.1)
    raise AssertionError(f"the engine never went idle: {stats}")


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One running sequence, no queue, a 3 s request timeout, room for a long answer."""
    log = tmp_path_factory.mktemp("small") / "server.log"
    args = [*SMALL, "--max-seqs", "1", "--max-queue", "0", "--request-timeout", "3",
            "--max-seq-len", "2048"]
    with launch(args, log) as server:
        yield server


def test_a_full_server_answers_429_then_times_the_long_request_out(small_server: Server) -> None:
    before = wait_idle(small_server)
    stream = Stream(small_server.base_url, {**LONG, "max_tokens": 2000})  # 3 s: not near done
    try:
        first_content(stream)
        client = openai.OpenAI(base_url=f"{small_server.base_url}/v1", api_key="x",
                               max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="default", max_tokens=4,
                                           messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 429
        assert int(info.value.response.headers["retry-after"]) >= 1
        error = info.value.response.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        events = stream.rest()  # the long request runs into --request-timeout
    finally:
        stream.close()
    assert events[-1] == "[DONE]"
    error_event = events[-2]
    assert isinstance(error_event, dict) and error_event["error"]["code"] == "request_timeout"
    after = wait_idle(small_server)
    assert after["free_blocks"] == after["total_blocks"]
    assert after["timed_out"] == before["timed_out"] + 1
    assert after["rejected"] == before["rejected"] + 1
    assert chat(small_server.base_url).status_code == 200  # capacity is back


def test_an_injected_step_failure_fails_streams_and_turns_health_503(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMCP_FAULTS", "step_error_at=12")
    with launch(SMALL, tmp_path / "server.log") as server:
        stream = Stream(server.base_url, LONG)
        try:
            first_content(stream)
            events = stream.rest()
        finally:
            stream.close()
        assert events[-1] == "[DONE]"
        error = events[-2]
        assert isinstance(error, dict) and error["error"]["type"] == "server_error"
        assert "injected fault" in error["error"]["message"]
        health = httpx.get(f"{server.base_url}/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["status"] == "error" and "MemoryError" in health.json()["error"]
        refused = chat(server.base_url)
        assert refused.status_code == 503 and "MemoryError" in refused.json()["error"]["message"]
        refused_stream = chat(server.base_url, stream=True)
        assert refused_stream.status_code == 503  # refused before any stream starts


@pytest.fixture
def raw_server(tmp_path: Path) -> Iterator[Any]:
    """``start(args)`` -> (base_url, process) of a server this test will stop itself."""
    started: list[Any] = []

    def start(args: list[str]) -> tuple[str, subprocess.Popen[bytes], Path]:
        port = free_port()
        log = tmp_path / f"server{len(started)}.log"
        cm = launch_process(["serve", "--port", str(port), *SMALL, *args], log)
        proc = cm.__enter__()
        started.append(cm)
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, proc, log)
        return base_url, proc, log

    yield start
    for cm in started:
        cm.__exit__(None, None, None)


def refused_soon(base_url: str) -> bool:
    """Whether new connections are refused within a few seconds. A connection that reached the
    listener's backlog as it closed is reset instead: that counts as refused too."""
    for _ in range(100):
        try:
            httpx.get(f"{base_url}/health", timeout=2)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            return True
        time.sleep(0.05)
    return False


def test_sigterm_lets_a_stream_finish_within_the_grace_period(raw_server: Any) -> None:
    base_url, proc, _ = raw_server(["--shutdown-grace", "120"])
    stream = Stream(base_url, {**LONG, "max_tokens": 48})
    try:
        first_content(stream)
        proc.send_signal(signal.SIGTERM)
        assert refused_soon(base_url)
        events = stream.rest()
    finally:
        stream.close()
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert not any("error" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert proc.wait(timeout=EXIT_MARGIN_S) == 0


def test_drain_delay_keeps_listening_with_retryable_503s_then_refuses(raw_server: Any) -> None:
    """What a load balancer sees of a replica being stopped: new connections still answered,
    with /health and requests 503 (HAProxy retries those on another replica), until the delay
    is over; then refused, and the process exits 0."""
    base_url, proc, log = raw_server(["--drain-delay", "4"])
    proc.send_signal(signal.SIGTERM)
    log_lines(log, "shutting down")
    signalled = time.monotonic()
    with httpx.Client(timeout=10) as fresh:  # a connection opened after the signal
        health = fresh.get(f"{base_url}/health", headers={"Connection": "close"})
        refused = fresh.post(f"{base_url}/v1/chat/completions", headers={"Connection": "close"},
                             json={"messages": [{"role": "user", "content": "hi"}]})
    answered = time.monotonic()
    assert answered - signalled < 4, "answered after the delay: nothing was checked"
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert refused_soon(base_url)
    assert proc.wait(timeout=EXIT_MARGIN_S) == 0


def test_sigterm_aborts_what_outlives_the_grace_period_with_an_error_event(
        raw_server: Any) -> None:
    base_url, proc, _ = raw_server(["--shutdown-grace", "1"])
    stream = Stream(base_url, LONG)
    try:
        first_content(stream)
        proc.send_signal(signal.SIGTERM)
        events = stream.rest()
    finally:
        stream.close()
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and error["error"]["code"] == "shutting_down"
    assert proc.wait(timeout=1 + EXIT_MARGIN_S) == 0


def test_the_api_key_never_reaches_the_logs(raw_server: Any, tmp_path: Path) -> None:
    key = "sk-e2e-secret-7c1f0d9a4b"
    log_file = tmp_path / "infermcp.log"
    base_url, proc, stdout_log = raw_server(["--api-key", key, "--log-level", "debug",
                                             "--log", str(log_file)])
    statuses = []
    for sent in (key, key[:-1], "wrong", key + "0"):
        headers = {"Authorization": f"Bearer {sent}"}
        statuses.append(httpx.get(f"{base_url}/v1/models", headers=headers,
                                  timeout=30).status_code)
        httpx.post(f"{base_url}/v1/chat/completions", headers=headers, timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        httpx.post(f"{base_url}/mcp", headers={**headers, "Accept": "application/json, "
                                               "text/event-stream"}, timeout=30,
                   json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                       "protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}})
    assert statuses == [200, 401, 401, 401]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=EXIT_MARGIN_S) == 0
    logs = log_file.read_text() + stdout_log.read_text()
    assert " DEBUG " in logs and "method=POST path=/v1/chat/completions" in logs  # verbosely
    assert key[:-1] not in logs
