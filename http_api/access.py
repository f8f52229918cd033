"""Request ids, the access log and request metrics, as one outermost ASGI middleware.

Every HTTP response (errors, 401s and SSE streams included) carries ``x-request-id``: the
client's own if it sent a sane one, else a fresh one. When the response ends, one line goes to
the ``infermcp.access`` logger (``key=value`` pairs: method, path, status, latency, request id,
and the prompt and completion tokens a route reported with :func:`note_tokens`), and the
request is counted in the app's metrics by route and status.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import quote

from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_api.errors import error_response

log = logging.getLogger("infermcp.access")

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")


@dataclass
class AccessRecord:
    """What the access log line of the current request says beyond the HTTP basics."""

    request_id: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _printable(path: str) -> str:
    """The decoded path percent-encoded again, as it was sent: a space, a control character
    (``%0A`` forging a second log line) or a non-ASCII one never reaches the log verbatim."""
    return quote(path, safe="/;:@&=+$,!~*'()-._")


# Holds the record itself, so tasks started inside the request (a streaming body) update it.
_current: ContextVar[AccessRecord | None] = ContextVar("infermcp_access", default=None)


def note_tokens(prompt_tokens: int, completion_tokens: int | None = None) -> None:
    """Report the current request's token usage to its access log line."""
    record = _current.get()
    if record is not None:
        record.prompt_tokens, record.completion_tokens = prompt_tokens, completion_tokens


def request_id_of(header: str | None) -> str:
    """The client's request id if it is sane (ASCII word characters and ``._:/+=@-``, at most
    128), else a fresh one."""
    if header and _SANE_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


RequestSink = Callable[[str, str, int, float], None]  # method, route, status, seconds


class AccessLog:
    """The outermost middleware: request id, access log line, request metrics."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute],
                 on_request: RequestSink | None = None) -> None:
        self.app = app
        self._routes = routes
        self._on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        raw_id = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        record = AccessRecord(request_id_of(raw_id))
        method, path, route = scope["method"], _printable(scope["path"]), self._route(scope)
        status = 500
        started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = record.request_id
            await send(message)

        token = _current.set(record)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if not started:  # answer in the envelope, with the id; the error handler logs it
                await error_response(500, f"internal error: {type(exc).__name__}",
                                     "server_error")(scope, receive, send_with_id)
            raise
        finally:
            _current.reset(token)
            seconds = time.perf_counter() - start
            self._log(method, path, status, seconds, record)
            if self._on_request is not None:
                self._on_request(method, route, status, seconds)

    def _log(self, method: str, path: str, status: int, seconds: float, record: AccessRecord
             ) -> None:
        line = (f"method={method} path={path} status={status} latency_ms={seconds * 1000:.1f} "
                f"request_id={record.request_id}")
        if record.prompt_tokens is not None:
            line += f" prompt_tokens={record.prompt_tokens}"
        if record.completion_tokens is not None:
            line += f" completion_tokens={record.completion_tokens}"
        log.info(line)

    def _route(self, scope: Scope) -> str:
        """The route template the path matches (a bounded label set), else ``other``; read
        before the app runs, since routing rewrites the scope."""
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", "other"))
        return "other"
