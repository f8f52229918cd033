"""URL allow-lists: the patterns of ``--allow-image-urls`` and ``--mcp-allow-url``, and whether a
URL is one they allow. Everything the server fetches or connects to on a request's behalf (an
image URL, a remote MCP server) passes :func:`permitted` first.

A pattern is ``scheme://host[:port][/path]`` with fnmatch wildcards
(``https://images.example.com/*``, ``https://*.example.com/*``), matched piece by piece on the URL
as httpx parses it, the parse that is then fetched: a ``*`` in the host matches within the host
only, so ``https://*.example.com/*`` cannot be met by ``https://evil.test/.example.com/``. The port
is the scheme's default unless the pattern names one; no path means any path. URLs with user info
or dot segments are refused. The host is the boundary an operator sets; a path pattern narrows
what is reached on it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class UrlPattern:
    """One pattern, split into the pieces a URL is matched against."""

    text: str  # as the operator wrote it
    scheme: str
    host: str  # an fnmatch pattern over the host name
    port: int
    path: str  # an fnmatch pattern over the path and query

    @classmethod
    def parse(cls, text: str) -> UrlPattern:
        """The pattern of ``text``, or a ValueError saying what a pattern looks like."""
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in PORTS or not parts.hostname or parts.username \
                or parts.fragment:
            raise ValueError(f"{text!r} is not a URL pattern; write "
                             "http(s)://host[:port][/path], e.g. 'https://example.com/*'")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return cls(text, parts.scheme, parts.hostname, port or PORTS[parts.scheme], path or "/*")

    def matches(self, url: httpx.URL) -> bool:
        target = url.path + (f"?{url.query.decode()}" if url.query else "")
        return (url.scheme == self.scheme and fnmatch.fnmatchcase(url.host, self.host)
                and (url.port or PORTS[url.scheme]) == self.port
                and fnmatch.fnmatchcase(target, self.path))


def http_url(url: str) -> httpx.URL | None:
    """``url`` parsed, if it is an http(s) URL with a host; else None."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    return target if target.scheme in PORTS and target.host else None


def permitted(url: httpx.URL, patterns: Collection[UrlPattern]) -> bool:
    """Whether a pattern allows ``url`` (never one with user info or dot segments)."""
    dotted = {".", ".."} & set(url.path.split("/"))
    return not url.userinfo and not dotted and any(p.matches(url) for p in patterns)
