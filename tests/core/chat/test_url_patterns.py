"""Which URLs a pattern allows: matched piece by piece, never across the host."""

from __future__ import annotations

import pytest

from core.chat.url_patterns import UrlPattern, http_url, permitted


def allows(pattern: str, url: str) -> bool:
    target = http_url(url)
    assert target is not None
    return permitted(target, [UrlPattern.parse(pattern)])


@pytest.mark.parametrize(("pattern", "url"), [
    ("https://images.example.com/*", "https://images.example.com/a/b.png?size=2"),
    ("https://images.example.com", "https://IMAGES.example.com/any/path.png"),
    ("https://images.example.com:443/*", "https://images.example.com/a.png"),
    ("https://*.example.com/*", "https://cdn.eu.example.com/a.png"),
    ("http://127.0.0.1:8000/public/*", "http://127.0.0.1:8000/public/a.png"),
])
def test_allowed(pattern: str, url: str) -> None:
    assert allows(pattern, url)


@pytest.mark.parametrize(("pattern", "url"), [
    ("https://*.example.com/*", "https://evil.test/.example.com/a.png"),
    ("https://*.example.com/*", "https://evil.test?.example.com/a.png"),
    ("https://*.example.com/*", "https://example.com.evil.test/a.png"),
    ("https://images.example.com/*", "https://images.example.com@evil.test/a.png"),
    ("https://images.example.com/*", "https://user:pw@images.example.com/a.png"),
    ("https://images.example.com/*", "http://images.example.com/a.png"),
    ("https://images.example.com/*", "https://images.example.com:8443/a.png"),
    ("http://127.0.0.1:8000/public/*", "http://127.0.0.1:8000/private/a.png"),
    ("http://127.0.0.1:8000/public/*", "http://127.0.0.1:8000/public/%2e%2e/private/a.png"),
    ("http://127.0.0.1:8000/public/*", "http://127.0.0.1:8000/public/../private/a.png"),
])
def test_refused(pattern: str, url: str) -> None:
    assert not allows(pattern, url)


@pytest.mark.parametrize("pattern", ["images.example.com", "ftp://example.com/*",
                                     "https://", "https://example.com:port/*",
                                     "https://u@example.com/*"])
def test_a_bad_pattern_says_what_a_pattern_is(pattern: str) -> None:
    with pytest.raises(ValueError, match="http\\(s\\)://host"):
        UrlPattern.parse(pattern)


@pytest.mark.parametrize("url", ["ftp://example.com/a", "example.com/a", "https://", "data:,x",
                                 "http://[::1"])
def test_only_an_http_url_with_a_host_parses(url: str) -> None:
    assert http_url(url) is None


def test_no_pattern_allows_nothing() -> None:
    target = http_url("https://example.com/a")
    assert target is not None and not permitted(target, [])
