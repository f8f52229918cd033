"""One table that maps every failure to OpenAI's error envelope and status code."""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.errors import InferError, OverloadedError

log = logging.getLogger("infermcp.http")


CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, never received


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; the work has been aborted."""


def error_body(message: str, error_type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def infer_error_body(exc: InferError) -> dict[str, Any]:
    return error_body(exc.message, exc.error_type, exc.param, exc.code)


def error_response(status: int, message: str, error_type: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, param, code), status_code=status,
                        headers=headers)


async def handle_infer_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferError)
    headers = None
    if isinstance(exc, OverloadedError):  # the openai SDK honours both when it retries
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after))),
                   "retry-after-ms": str(max(1, round(exc.retry_after * 1000)))}
    return JSONResponse(infer_error_body(exc), status_code=exc.status_code, headers=headers)


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    first = exc.errors()[0]
    param = _param_path(first["loc"])
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    return error_response(400, message, "invalid_request_error", param, code)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "is-instance"}


def _param_path(loc: tuple[int | str, ...]) -> str | None:
    """``("messages", 0, "role")`` -> ``messages[0].role``, without pydantic's union-member tags."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "-" in part:
            break
        else:
            path += f".{part}" if path else part
    return path or None


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found_error", 405: "invalid_request_error", 401: "authentication_error"}
    return error_response(exc.status_code, str(exc.detail), kinds.get(exc.status_code,
                          "invalid_request_error"), headers=dict(exc.headers or {}))


async def handle_client_disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED)  # uvicorn drops it: nobody is listening


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


EXCEPTION_HANDLERS = {
    InferError: handle_infer_error,
    ValidationError: handle_validation_error,
    HTTPException: handle_http_exception,
    ClientDisconnected: handle_client_disconnected,
    Exception: handle_unexpected,
}
