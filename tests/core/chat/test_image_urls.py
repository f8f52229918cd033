"""An image URL no pattern allows is a 400 naming where it was, before any connection."""

from __future__ import annotations

import pytest

from core.chat.image_urls import allowed_url
from core.chat.url_patterns import UrlPattern
from core.errors import InvalidRequestError

WHERE = "input[0].content[0]"
PATTERNS = [UrlPattern.parse("https://images.example.com/*")]


def test_an_allowed_url_comes_back_parsed() -> None:
    url = allowed_url("https://IMAGES.example.com/a.png", WHERE, PATTERNS)
    assert (url.host, url.path) == ("images.example.com", "/a.png")


@pytest.mark.parametrize(("url", "patterns", "says"), [
    ("ftp://images.example.com/a.png", PATTERNS, "must be a data: URI or an http(s) URL"),
    ("https://images.example.com/a.png", [], "does not fetch image URLs (its operator can "
                                             "allow some with --allow-image-urls)"),
    ("https://evil.test/images.example.com/a.png", PATTERNS,
     "does not fetch this image URL (not allowed by its --allow-image-urls)"),
])
def test_a_refused_url_is_a_400_naming_where(url: str, patterns: list[UrlPattern],
                                             says: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        allowed_url(url, WHERE, patterns)
    assert info.value.param == WHERE
    assert info.value.message.startswith(f"{WHERE}: ") and says in info.value.message
