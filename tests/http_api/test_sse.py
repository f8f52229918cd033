"""Keep-alive merging of a slow event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from http_api.sse import with_keep_alive


async def slow(items: list[int], delay: float) -> AsyncIterator[int]:
    for item in items:
        await asyncio.sleep(delay)
        yield item


async def test_keep_alive_yields_none_between_slow_items() -> None:
    out = [x async for x in with_keep_alive(slow([1, 2], 0.08), interval=0.02)]
    assert [x for x in out if x is not None] == [1, 2]
    assert out.count(None) >= 2


async def test_no_keep_alive_when_items_are_fast() -> None:
    out = [x async for x in with_keep_alive(slow([1, 2, 3], 0), interval=1)]
    assert out == [1, 2, 3]
