"""Reading an OpenAI request body: JSON object or a 400/413 that says what is wrong."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from core.errors import InvalidRequestError, RequestTooLargeError

MAX_BODY_BYTES = 8 << 20


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object."""
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
