"""Image URLs: which ones the server fetches (``--allow-image-urls``), and reading them bounded.

The patterns and how they match: :mod:`core.chat.url_patterns`. No pattern, no fetch:
a refused URL is a 400 before any connection is made.

A fetch follows no redirect (a redirect is a 400: it could lead anywhere), is bounded as a whole
by its timeout, reads no more than its byte limit (a larger ``Content-Length`` is refused
unread), asks for and accepts only an uncompressed answer, and needs an image content type.
"""

from __future__ import annotations

from collections.abc import Collection

import anyio
import httpx

from core.chat.url_patterns import UrlPattern, http_url, permitted
from core.errors import InvalidRequestError

HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "infermcp"}


def allowed_url(url: str, where: str, patterns: Collection[UrlPattern]) -> httpx.URL:
    """``url`` parsed, or a 400 naming ``where`` when no pattern allows it."""
    target = http_url(url)
    if target is None:
        raise InvalidRequestError(f"{where}: an image URL must be a data: URI or an http(s) URL",
                                  param=where)
    if not patterns:
        raise InvalidRequestError(f"{where}: this server does not fetch image URLs (its "
                                  "operator can allow some with --allow-image-urls); send the "
                                  "image as a base64 data: URI", param=where)
    if not permitted(target, patterns):
        raise InvalidRequestError(f"{where}: the server does not fetch this image URL (not "
                                  "allowed by its --allow-image-urls); send the image as a "
                                  "base64 data: URI", param=where)
    return target


async def fetch(url: httpx.URL, where: str, max_bytes: int, timeout_s: float,
                types: Collection[str]) -> bytes:
    """The body of an (allowed) image URL; a 400 naming ``where`` for anything else."""
    try:
        with anyio.fail_after(timeout_s):
            async with httpx.AsyncClient(follow_redirects=False, timeout=timeout_s) as client, \
                    client.stream("GET", url, headers=HEADERS) as response:
                return await _read(response, where, max_bytes, types)
    except (TimeoutError, httpx.TimeoutException):
        raise _unfetched(where, f"no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise _unfetched(where, type(exc).__name__) from None


async def _read(response: httpx.Response, where: str, max_bytes: int,
                types: Collection[str]) -> bytes:
    if response.is_redirect:
        raise _unfetched(where, f"it answered {response.status_code}, a redirect (redirects "
                         "are not followed)")
    if response.status_code != 200:
        raise _unfetched(where, f"it answered HTTP {response.status_code}")
    check_type(response.headers.get("content-type", ""), where, types)
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        raise _unfetched(where, "it answered compressed (only identity is read)")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_big(where, max_bytes)
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise too_big(where, max_bytes)
    return bytes(body)


def check_type(content_type: str, where: str, types: Collection[str]) -> None:
    """A 400 unless ``content_type`` (parameters aside) is one of ``types``."""
    mime = content_type.split(";")[0].strip().lower()
    if mime not in types:
        raise InvalidRequestError(f"{where}: the type {mime or 'none'!r} is not supported; "
                                  "send a PNG, JPEG, WebP or GIF image", param=where)


def too_big(where: str, max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(f"{where}: the image is larger than {max_bytes} bytes "
                               "(--max-image-bytes)", param=where)


def _unfetched(where: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"{where}: the image URL could not be fetched: {why}",
                               param=where)
