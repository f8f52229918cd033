"""An in-process MCP client over ``build_server`` and a fake model (no torch, no sockets)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp.client import Client

from core.serving.registry import ModelEntry, ModelRegistry
from mcp_server import build_server
from tests.http_api.fakes import FakeEngine, FakeModel


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol eras: the initialize handshake and 2026-07-28 direct dispatch."""
    return str(request.param)


def registry_of(load: Callable[[], Any], on_error: Callable[[str], None] = print,
                model_id: str = "fake-model") -> ModelRegistry:
    """A registry serving one chat model loaded by ``load``."""
    return ModelRegistry([ModelEntry(model_id, "chat", load)], on_error)


def is_loaded(registry: ModelRegistry) -> bool:
    return registry.entries[0].model is not None


@asynccontextmanager
async def connect_slot(registry: ModelRegistry, mode: str) -> AsyncIterator[Client]:
    """A client of ``build_server(registry)``; its lifespan starts loading the models."""
    async with Client(build_server(registry), mode=mode) as client:
        yield client


@asynccontextmanager
async def connect_fake(engine: FakeEngine, mode: str, **model: Any) -> AsyncIterator[Client]:
    """A client of a server whose fake model (with the fields ``model``) has loaded."""
    registry = registry_of(lambda: FakeModel(engine=engine, **model), _unexpected)
    async with connect_slot(registry, mode) as client:
        with anyio.fail_after(5):
            while not is_loaded(registry):
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
