"""Plumbing shared by the chat and completions routes: read the body, submit n choices, merge."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from core.async_engine import RequestStream
from core.errors import InvalidRequestError, RequestTooLargeError
from core.outputs import EngineRequest, RequestOutput
from core.params import SamplingParams
from core.serving import ServedModel

MAX_BODY_BYTES = 8 << 20


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type:
        raise InvalidRequestError(f"Content-Type must be application/json, not {content_type!r}",
                                  code="invalid_content_type")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise RequestTooLargeError(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}",
                                  code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", code="invalid_json")
    return body


@dataclass
class Submission:
    """The n engine streams of one API request, with the ids and times its chunks share."""

    model: ServedModel
    streams: list[RequestStream]
    id: str
    created: int = field(default_factory=lambda: int(time.time()))

    def abort(self) -> None:
        for stream in self.streams:
            stream.abort()


def submit(model: ServedModel, prefix: str, prompts: list[list[int]], n: int,
           params_for: Any, truncate: bool) -> Submission:
    """Submit ``n`` choices for each prompt; choice index = prompt index * n + i."""
    rid = f"{prefix}-{uuid.uuid4().hex[:24]}"
    streams: list[RequestStream] = []
    try:
        for p, prompt in enumerate(prompts):
            for i in range(n):
                params: SamplingParams = params_for(p * n + i)
                request = EngineRequest(f"{rid}-{p * n + i}", prompt, params, truncate)
                streams.append(model.engine.generate(request))
    except BaseException:
        for stream in streams:
            stream.abort()
        raise
    return Submission(model, streams, rid)


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several output streams as (choice index, output) in arrival order."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await queue.put((index, out))
            await queue.put((index, None))
        except BaseException as exc:  # forwarded to the consumer below
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.abort()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
