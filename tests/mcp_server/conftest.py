"""An in-process MCP client over ``build_server`` and a fake model (no torch, no sockets)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from mcp.client import Client

from core.serving import ModelSlot
from mcp_server import build_server
from tests.http_api.fakes import FakeEngine, FakeModel


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol eras: the initialize handshake and 2026-07-28 direct dispatch."""
    return str(request.param)


@asynccontextmanager
async def connect_slot(slot: ModelSlot, mode: str) -> AsyncIterator[Client]:
    """A client of ``build_server(slot)``; its lifespan starts loading the slot."""
    async with Client(build_server(slot), mode=mode) as client:
        yield client


@asynccontextmanager
async def connect_fake(engine: FakeEngine, mode: str) -> AsyncIterator[Client]:
    """A client of a server whose fake model has loaded."""
    slot = ModelSlot(lambda: FakeModel(engine=engine), _unexpected)  # type: ignore[arg-type, return-value]
    async with connect_slot(slot, mode) as client:
        with anyio.fail_after(5):
            while slot.model is None:
                await anyio.sleep(0.005)
        yield client


def _unexpected(message: str) -> None:
    raise AssertionError(f"the fake model failed to load: {message}")


class Gate:
    """A loader held at 'loading' until ``open()``, or failing with ``fail``."""

    def __init__(self, fail: str | None = None) -> None:
        self._event = threading.Event()
        self._fail = fail

    def load(self) -> FakeModel:
        from core.errors import ModelLoadError

        if self._fail is not None:
            raise ModelLoadError(self._fail)
        self._event.wait(10)
        return FakeModel()

    def open(self) -> None:
        self._event.set()
