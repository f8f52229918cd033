"""Routes built after the server starts: their imports stay off the way to a ready server.

The MCP front end's routes come from the MCP SDK, whose imports take 1-1.5 s of a 2-core
machine's start-up; imported while the model loads, they slowed the load by as much. A
:class:`DeferredRoutes` answers their paths from the start and builds the real routes in a
worker thread once ``after`` is set (the models have settled) or a first request to them comes,
whichever is first, then runs the lifespan they need; a request waits for the build, and one
after a failed build gets a 503.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import anyio
import anyio.to_thread
from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

from core.errors import EngineUnavailableError

log = logging.getLogger("infermcp.http")

WAIT_POLL_S = 0.05  # how often the builder looks at ``after`` (a threading.Event)
Lifespan = Callable[[], AbstractAsyncContextManager[None]]
Built = tuple[Sequence[BaseRoute], Lifespan]


class DeferredRoutes:
    """``paths`` (Starlette route paths) served by the routes ``build`` returns, built in a
    worker thread once ``after`` is set or a request comes, and run under the lifespan it
    returns with them."""

    def __init__(self, paths: Sequence[str], build: Callable[[], Built],
                 after: threading.Event | None = None) -> None:
        self.routes: list[BaseRoute] = [Route(path, endpoint=self) for path in paths]
        self._build = build
        self._after = after
        self._router: Router | None = None
        self._error: str | None = None
        self._settled: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._wanted: anyio.Event | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Build the routes in the background and keep their lifespan entered while the block
        runs (a build still under way when it ends is abandoned)."""
        self._settled, self._stop, self._wanted = anyio.Event(), anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(self._run, self._settled, self._stop, self._wanted)
            try:
                yield
            finally:
                self._stop.set()
                if self._router is None:
                    group.cancel_scope.cancel()

    async def _run(self, settled: anyio.Event, stop: anyio.Event, wanted: anyio.Event) -> None:
        try:
            while self._after is not None and not self._after.is_set() and not wanted.is_set():
                with anyio.move_on_after(WAIT_POLL_S):
                    await wanted.wait()
            routes, lifespan = await anyio.to_thread.run_sync(self._build,
                                                              abandon_on_cancel=True)
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            log.error("cannot serve %s: %s", ", ".join(self._paths()), self._error)
            settled.set()
            return
        async with lifespan():
            self._router = Router(routes=list(routes))
            settled.set()
            await stop.wait()

    def _paths(self) -> list[str]:
        return [str(getattr(route, "path", route)) for route in self.routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._router is None and self._settled is not None:
            if self._wanted is not None:
                self._wanted.set()
            await self._settled.wait()
        if self._router is None:
            reason = self._error or "the server is starting"
            raise EngineUnavailableError(f"this endpoint is not available: {reason}",
                                         code="unavailable")
        await self._router(scope, receive, send)
