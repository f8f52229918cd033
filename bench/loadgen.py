"""Async load generator for OpenAI-compatible streaming chat completion servers."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

SYSTEM_PROMPT = (
    "You are a concise, knowledgeable assistant. Answer the user's question clearly "
    "and accurately in plain English, using short paragraphs."
)

PROMPTS: tuple[str, ...] = (
    "Why is the sky blue?",
    "Explain how a hash table works.",
    "What causes the seasons on Earth?",
    "How does a refrigerator keep food cold?",
    "What is the difference between a virus and a bacterium?",
    "Describe how photosynthesis works.",
    "What is a black hole?",
    "How do vaccines train the immune system?",
    "Why do cats purr?",
    "What is the purpose of a compiler?",
    "How does GPS determine your location?",
    "What makes bread rise?",
    "Explain the rules of chess in brief.",
    "Why does ice float on water?",
    "What is inflation in economics?",
    "How do airplanes stay in the air?",
)

REQUEST_TIMEOUT = httpx.Timeout(connect=30.0, read=600.0, write=30.0, pool=None)


@dataclass
class RequestResult:
    """Measurements of one streaming request (times in seconds)."""

    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    output_tokens: int = 0
    error: str | None = None


@dataclass
class LevelResult:
    """Aggregated metrics of one concurrency level (latencies in seconds)."""

    concurrency: int
    num_requests: int
    completed: int
    errors: int
    duration: float
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float
    e2e_p50: float
    first_error: str | None = None


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of values, or NaN when values is empty."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """Parse one SSE line into a JSON object.

    Returns None for blank lines, comments (``:``), non-data fields and ``[DONE]``.
    """
    line = line.strip()
    if not line or line.startswith(":") or not line.startswith("data:"):
        return None
    payload = line[len("data:"):].strip()
    if not payload or payload == "[DONE]":
        return None
    obj = json.loads(payload)
    return obj if isinstance(obj, dict) else None


def build_payload(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """Build the chat completion request body for one prompt."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
    }


def _chunk_content(chunk: dict[str, Any]) -> str:
    """Concatenate the delta content of all choices in a chunk."""
    parts = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            parts.append(content)
    return "".join(parts)


async def send_request(
    client: httpx.AsyncClient, base_url: str, model: str, prompt: str, max_tokens: int
) -> RequestResult:
    """Send one streaming chat completion and measure TTFT, ITLs and e2e latency."""
    result = RequestResult()
    url = f"{base_url.rstrip('/')}/v1/chat/completions"
    content_chunks = 0
    usage_tokens: int | None = None
    start = time.perf_counter()
    last = start
    try:
        async with client.stream("POST", url, json=build_payload(model, prompt, max_tokens)) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode(errors="replace")
                raise RuntimeError(f"HTTP {r.status_code}: {body[:200]}")
            async for line in r.aiter_lines():
                chunk = parse_sse_line(line)
                if chunk is None:
                    continue
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {str(chunk['error'])[:200]}")
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                if not _chunk_content(chunk):
                    continue
                now = time.perf_counter()
                if result.ttft is None:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last)
                last = now
                content_chunks += 1
        if content_chunks == 0 and max_tokens > 0:
            raise RuntimeError("stream produced no content")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.e2e = time.perf_counter() - start
    result.output_tokens = usage_tokens if usage_tokens is not None else content_chunks
    return result


def summarize(
    concurrency: int, num_requests: int, results: list[RequestResult], duration: float
) -> LevelResult:
    """Aggregate per-request results of one level into a LevelResult."""
    ok = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]
    tokens = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [itl for r in ok for itl in r.itls]
    safe_duration = duration if duration > 0 else float("nan")
    return LevelResult(
        concurrency=concurrency,
        num_requests=num_requests,
        completed=len(ok),
        errors=len(failed),
        duration=duration,
        output_tokens=tokens,
        output_tokens_per_s=tokens / safe_duration,
        requests_per_s=len(ok) / safe_duration,
        ttft_p50=percentile(ttfts, 50),
        ttft_p95=percentile(ttfts, 95),
        itl_p50=percentile(itls, 50),
        itl_p95=percentile(itls, 95),
        e2e_p50=percentile([r.e2e for r in ok], 50),
        first_error=failed[0].error if failed else None,
    )


async def run_level(
    base_url: str, model: str, concurrency: int, num_requests: int, max_tokens: int
) -> LevelResult:
    """Run num_requests streaming requests with `concurrency` parallel workers."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(num_requests):
        queue.put_nowait(i)
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            prompt = PROMPTS[i % len(PROMPTS)]
            results.append(await send_request(client, base_url, model, prompt, max_tokens))

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))
        duration = time.perf_counter() - start
    return summarize(concurrency, num_requests, results, duration)
