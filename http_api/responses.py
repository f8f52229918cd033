"""The OpenAI Responses API: POST /v1/responses (JSON or SSE), GET and DELETE
/v1/responses/{response_id}.

A stream sends OpenAI's events as ``event: <type>`` / ``data: {...}`` frames, each with a
``sequence_number`` counting from 0, keep-alive comments while it waits, and no ``[DONE]``: it
ends after ``response.completed`` (or ``response.incomplete``). A failure mid-way sends an
``error`` event and ``response.failed``, then closes.

Both forms carry the new response's id in ``x-response-id`` before the body: a load balancer
can remember which replica holds the conversation's prefix cache (examples/deploy/haproxy.cfg).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from core.errors import InferError
from core.responses.handler import ResponseRun, delete_response, get_response, start_response
from core.responses.output import Event
from http_api.body import read_json
from http_api.protocol import ResponseCreateRequest
from http_api.sse import KEEP_ALIVE, keep_alive_interval, until_disconnected, with_keep_alive

log = logging.getLogger("infermcp.http")
RESPONSE_ID_HEADER = "x-response-id"


async def create_response(request: Request) -> Response:
    body = ResponseCreateRequest.model_validate(await read_json(request))
    run = await start_response(request.app.state.models, request.app.state.responses,
                               body.to_request(), request.app.state.mcp_host)
    if body.stream:
        return _event_stream(run)
    return JSONResponse(await until_disconnected(request, run.collect(), run.abort),
                        headers={RESPONSE_ID_HEADER: run.id})


async def retrieve_response(request: Request) -> Response:
    return JSONResponse(await get_response(request.app.state.responses,
                                           request.path_params["response_id"]))


async def remove_response(request: Request) -> Response:
    return JSONResponse(await delete_response(request.app.state.responses,
                                              request.path_params["response_id"]))


def _event_stream(run: ResponseRun) -> StreamingResponse:
    """``run``'s events as SSE; however the stream ends (done, failed, client gone) the
    generation is aborted."""
    numbers = itertools.count()

    def frame(event: Event) -> bytes:
        event = {"type": event["type"], "sequence_number": next(numbers),
                 **{k: v for k, v in event.items() if k != "type"}}
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        return f"event: {event['type']}\ndata: {data}\n\n".encode()

    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in with_keep_alive(run.events(), keep_alive_interval()):
                yield KEEP_ALIVE if event is None else frame(event)
        except Exception as exc:
            if not isinstance(exc, InferError):
                log.exception("response stream failed")
                exc = InferError(f"internal error: {type(exc).__name__}")
            for event in _failure(run, exc):
                yield frame(event)
        finally:
            run.abort()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", RESPONSE_ID_HEADER: run.id}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def _failure(run: ResponseRun, exc: InferError) -> list[dict[str, Any]]:
    error = {"type": "error", "code": exc.code or exc.error_type, "message": exc.message,
             "param": exc.param}
    return [error, {"type": "response.failed", "response": run.failed(exc)}]
