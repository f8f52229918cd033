"""Routes built after start-up (http_api/deferred.py): on a signal or a first request, served,
failed, abandoned."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from http_api.deferred import Built, DeferredRoutes
from http_api.errors import EXCEPTION_HANDLERS


def app_of(deferred: DeferredRoutes) -> Starlette:
    return Starlette(routes=deferred.routes, exception_handlers=EXCEPTION_HANDLERS,
                     lifespan=lambda app: deferred.lifespan())


class Routes:
    """What a build returns, recording when it was built and its lifespan entered and left."""

    def __init__(self, after: threading.Event) -> None:
        self.after = after
        self.events: list[str] = []

    def build(self) -> Built:
        self.events.append("built after the signal" if self.after.is_set() else "built early")

        async def hello(request: Request) -> PlainTextResponse:
            return PlainTextResponse(f"hello {request.url.path}?{request.url.query}")

        @contextlib.asynccontextmanager
        async def lifespan() -> AsyncIterator[None]:
            self.events.append("entered")
            yield
            self.events.append("exited")

        routes: list[BaseRoute] = [Route("/x", hello), Mount("/messages/", app=hello_app)]
        return routes, lifespan


async def hello_app(scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse(f"posted to {scope['path']}")(scope, receive, send)


def test_the_routes_are_built_once_the_signal_comes() -> None:
    after = threading.Event()
    routes = Routes(after)
    deferred = DeferredRoutes(["/x"], routes.build, after=after)
    with TestClient(app_of(deferred)):
        time.sleep(0.3)
        assert routes.events == []  # nothing built before the signal
        after.set()
        for _ in range(500):  # the build, then its lifespan entered
            if len(routes.events) >= 2:
                break
            time.sleep(0.01)
        assert routes.events == ["built after the signal", "entered"]
    assert routes.events == ["built after the signal", "entered", "exited"]


def test_a_request_before_the_signal_has_them_built_at_once_and_reaches_them() -> None:
    after = threading.Event()  # never set: the models still load
    routes = Routes(after)
    deferred = DeferredRoutes(["/x", "/messages/{rest:path}"], routes.build, after=after)
    with TestClient(app_of(deferred)) as client:
        r = client.get("/x?a=1")
        assert (r.status_code, r.text) == (200, "hello /x?a=1")
        assert routes.events == ["built early", "entered"]
        r = client.post("/messages/?session_id=7")
        assert (r.status_code, r.text) == (200, "posted to /messages/")
        assert client.get("/y").status_code == 404
    assert routes.events == ["built early", "entered", "exited"]


def test_a_failed_build_answers_503_in_the_error_envelope() -> None:
    def build() -> Built:
        raise RuntimeError("no SDK here")

    with TestClient(app_of(DeferredRoutes(["/x"], build))) as client:
        r = client.get("/x")
    assert r.status_code == 503
    error = r.json()["error"]
    assert "RuntimeError: no SDK here" in error["message"]
    assert (error["type"], error["code"]) == ("server_error", "unavailable")


def test_stopping_before_the_build_abandons_it() -> None:
    after = threading.Event()  # never set: the models never settle
    routes = Routes(after)
    stopped = threading.Event()

    def serve_and_stop() -> None:
        with TestClient(app_of(DeferredRoutes(["/x"], routes.build, after=after))):
            pass
        stopped.set()

    threading.Thread(target=serve_and_stop, daemon=True).start()
    assert stopped.wait(10), "the app's lifespan did not end while its routes waited to build"
    assert routes.events == []
