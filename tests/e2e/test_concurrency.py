"""Several clients at once: continuous batching must not change results; disconnects abort."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import openai

from tests.e2e.conftest import Server

PROMPTS = [
    "Write a sentence about the sea.", "List two fruits.", "What is 2 + 2?",
    "Describe a cat.", "Name a large city.", "Give me a colour.", "Say something kind.",
    "What is the sun?",
]


async def greedy(aclient: openai.AsyncOpenAI, prompt: str, stream: bool) -> str:
    args = {"model": "default", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 32, "temperature": 0}
    if not stream:
        r = await aclient.chat.completions.create(**args)  # type: ignore[call-overload]
        return r.choices[0].message.content or ""
    text = ""
    async for chunk in await aclient.chat.completions.create(stream=True, **args):  # type: ignore[call-overload]
        text += "".join(c.delta.content or "" for c in chunk.choices)
    return text


async def test_eight_concurrent_streams_match_solo_outputs(uncached_server: Server) -> None:
    aclient = openai.AsyncOpenAI(base_url=f"{uncached_server.base_url}/v1", api_key="unused",
                                 max_retries=0, timeout=300)
    solo = [await greedy(aclient, p, stream=False) for p in PROMPTS]
    together = await asyncio.gather(*(greedy(aclient, p, stream=True) for p in PROMPTS))
    assert list(together) == solo


def wait_idle(server: Server, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    engine: dict[str, int] = {}
    while time.monotonic() < deadline:
        engine = server.health()["engine"]  # type: ignore[assignment]
        if engine["running"] == 0 and engine["waiting"] == 0:
            return engine
        time.sleep(0.1)
    return engine


def test_client_disconnect_aborts_stream(server: Server) -> None:
    before = wait_idle(server)
    body = {"messages": [{"role": "user", "content": "Tell a long story."}], "stream": True,
            "max_tokens": 800, "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=60) as r:
        received = []
        lines = r.iter_lines()  # held: a dropped iterator would close the connection here
        for line in lines:
            if line.startswith("data: {"):
                received.append(json.loads(line[6:]))
            if len(received) >= 3:
                break
        assert server.health()["engine"]["running"] == 1  # type: ignore[index]
    after = wait_idle(server)
    assert after["running"] == 0
    assert after["aborted"] == before["aborted"] + 1
    assert after["free_blocks"] == after["total_blocks"]


def test_non_streaming_disconnect_aborts(server: Server) -> None:
    before = wait_idle(server)
    body = {"messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 800, "ignore_eos": True, "temperature": 0}
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=1.5)
    after = wait_idle(server)
    assert after["running"] == 0
    assert after["aborted"] == before["aborted"] + 1
