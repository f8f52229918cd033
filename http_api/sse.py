"""Server-sent events: JSON chunks, keep-alive comments, a terminal error event, [DONE]."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse

from core.errors import InferError
from http_api.errors import ClientDisconnected, error_body, infer_error_body

log = logging.getLogger("infermcp.http")
T = TypeVar("T")

KEEP_ALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def keep_alive_interval() -> float:
    """Seconds between keep-alive comments (env ``KEEP_ALIVE_INTERVAL`` in ms, default 10000)."""
    return max(1, int(os.environ.get("KEEP_ALIVE_INTERVAL", "10000"))) / 1000


def chunk(id: str, created: int, model: str, obj: str, include_usage: bool,
          choices: list[dict[str, Any]]) -> dict[str, Any]:
    """One streamed chunk; with ``include_usage`` every chunk carries ``usage: null``."""
    payload = {"id": id, "object": obj, "created": created, "model": model,
               "system_fingerprint": None, "choices": choices}
    if include_usage:
        payload["usage"] = None
    return payload


def encode(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def with_keep_alive(events: AsyncIterator[T], interval: float
                          ) -> AsyncIterator[T | None]:
    """Yield from ``events``; yield None whenever ``interval`` passes without an event."""
    pending: asyncio.Task[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()


def sse_response(request: Request, payloads: AsyncIterator[dict[str, Any]],
                 on_close: Callable[[], None]) -> StreamingResponse:
    """Stream ``payloads`` as SSE; a failure mid-way becomes an error event, then [DONE].

    ``on_close`` runs however the stream ends (done, failed, client gone) and must abort
    whatever is still generating.
    """

    async def body() -> AsyncIterator[bytes]:
        try:
            async for payload in with_keep_alive(payloads, keep_alive_interval()):
                yield KEEP_ALIVE if payload is None else encode(payload)
        except InferError as exc:
            yield encode(infer_error_body(exc))
        except Exception as exc:
            log.exception("stream failed")
            yield encode(error_body(f"internal error: {type(exc).__name__}", "server_error"))
        finally:
            on_close()
        yield DONE

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def until_disconnected(request: Request, work: Awaitable[T],
                             on_disconnect: Callable[[], None]) -> T:
    """Await ``work``; if the client goes away first, cancel it, call ``on_disconnect`` and
    raise :class:`ClientDisconnected` (a 499 in the access log, not a server error)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            on_disconnect()
            await asyncio.gather(task, return_exceptions=True)  # let it unwind
            raise ClientDisconnected
        return await task
    finally:
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
