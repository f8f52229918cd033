"""Bearer-token checking for every HTTP surface (OpenAI API and MCP), as plain ASGI."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open without the key: health checks, the API docs, and /metrics (load and token counts, no
# request content; Prometheus scrapers need no secret, as with vLLM). Everything else (/v1/*,
# /tokenize, /detokenize, /re_isq, MCP) needs it.
OPEN_PATHS = ("/health", "/docs", "/openapi.json", "/api-doc", "/metrics")


def is_open(path: str, open_paths: tuple[str, ...] = OPEN_PATHS) -> bool:
    """Whether ``path`` is one of ``open_paths`` or below one."""
    return any(path == p or path.startswith(p + "/") for p in open_paths)


class BearerAuth:
    """Require ``Authorization: Bearer <api_key>`` on every HTTP request but the open paths."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: tuple[str, ...] = OPEN_PATHS
                 ) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"], self._open_paths) or \
                self._authorized(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {
            "message": "missing or invalid API key: send 'Authorization: Bearer <key>'",
            "type": "authentication_error", "param": None, "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="infermcp"')]})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False
