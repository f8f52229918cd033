"""Reading an OpenAI request body: a JSON object or a 400/413 that says what is wrong.

The body is bounded (``--max-body-bytes``, 413 beyond it, read no further than the limit), and
so is what it may contain: strict UTF-8, no NaN or Infinity, nesting at most ``MAX_JSON_DEPTH``
deep, no lone surrogates in strings (the tokenizer cannot encode them). A number with an
integral value is an integer (``4.0`` as ``4``), as JSON Schema and so the OpenAPI document read
it; the wire models are strict about types otherwise.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

from core.errors import InvalidRequestError, RequestTooLargeError

MAX_BODY_BYTES = 8 << 20
MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object."""
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type:
        raise InvalidRequestError(f"Content-Type must be application/json, not {content_type!r}",
                                  code="invalid_content_type")
    raw = await read_bounded(request, getattr(request.app.state, "max_body_bytes",
                                              MAX_BODY_BYTES))
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", code="invalid_json")
    return body


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, or a 413 as soon as it (or its Content-Length) passes ``limit`` bytes."""
    too_large = RequestTooLargeError(f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: a 400 for invalid UTF-8 or JSON, NaN/Infinity, or too deep nesting."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                           parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise _invalid(f"the request body is not valid UTF-8: {exc}") from None
    except RecursionError:
        raise _invalid(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except InvalidRequestError:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise _invalid(f"the request body is not valid JSON: {exc}") from None
    _check_tree(value)
    return value


def _reject_constant(name: str) -> float:
    raise _invalid(f"{name} is not a JSON number; send a finite number")


def _finite_float(text: str) -> float | int:
    value = float(text)
    if not math.isfinite(value):
        raise _invalid(f"the number {text[:32]} is out of range")
    return int(value) if value.is_integer() else value


def _check_tree(value: Any) -> None:
    """Depth and string checks without recursion (the tree may be hostile)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _SURROGATE.search(node):
                raise _invalid("the request body contains a lone UTF-16 surrogate escape")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _invalid(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, code="invalid_json")
