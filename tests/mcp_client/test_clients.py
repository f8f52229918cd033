"""A request's server_url is reached only when an --mcp-allow-url pattern allows it, host by
host (no connection is made here: a refused URL is answered before any)."""

from __future__ import annotations

import pytest

from core.chat.url_patterns import UrlPattern
from core.errors import InvalidRequestError
from core.responses.mcp import McpServerRef
from mcp_client.clients import McpClients

CLIENTS = McpClients(allow_urls=[UrlPattern.parse("https://*.example.com/mcp*")])


@pytest.mark.parametrize("url", ["https://tools.example.com/mcp",
                                 "https://a.b.example.com/mcp/sse"])
def test_an_allowed_server_url_passes(url: str) -> None:
    CLIENTS.check(McpServerRef("remote", url=url))


@pytest.mark.parametrize("url", [
    "https://evil.test/.example.com/mcp",  # a whole-URL wildcard would have let these through
    "https://evil.test/x.example.com/mcp",
    "https://tools.example.com@evil.test/mcp",
    "https://user:pw@tools.example.com/mcp",
    "http://tools.example.com/mcp",
    "https://tools.example.com:8443/mcp",
    "https://tools.example.com/other",
    "not a url",
])
def test_any_other_server_url_is_a_400_listing_the_patterns(url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        CLIENTS.check(McpServerRef("remote", url=url))
    assert info.value.param == "tools"
    assert info.value.message == (f"server_url {url!r} is not allowed; allowed URL patterns: "
                                  "https://*.example.com/mcp*")


def test_without_patterns_nothing_is_allowed() -> None:
    with pytest.raises(InvalidRequestError, match="none: start the server with --mcp-allow-url"):
        McpClients().check(McpServerRef("remote", url="https://tools.example.com/mcp"))
