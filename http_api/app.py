"""The Starlette application: routes, the error table, and the model loaded in the background."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.errors import EngineUnavailableError, InferError
from core.serving import ServedModel
from http_api import chat, completions
from http_api.errors import EXCEPTION_HANDLERS

log = logging.getLogger("infermcp.http")


class ModelSlot:
    """Holds the served model once it has loaded (in a background thread), or the load error."""

    def __init__(self, load: Callable[[], ServedModel], on_error: Callable[[str], None]) -> None:
        self._load = load
        self._on_error = on_error
        self.model: ServedModel | None = None
        self.error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="infermcp-load", daemon=True).start()

    def _run(self) -> None:
        try:
            self.model = self._load()
        except InferError as exc:
            self.error = exc.message
            self._on_error(exc.message)
        except Exception as exc:  # a broken checkpoint can raise anything
            self.error = f"{type(exc).__name__}: {exc}"
            self._on_error(self.error)

    def require(self) -> ServedModel:
        if self.model is None:
            raise EngineUnavailableError(self.error or "the model is still loading; retry shortly",
                                         code="model_loading" if self.error is None else None)
        return self.model


async def health(request: Request) -> Response:
    slot: ModelSlot = request.app.state.slot
    if slot.model is None:
        status = "error" if slot.error else "loading"
        return JSONResponse({"status": status, "error": slot.error}, status_code=503)
    stats = slot.model.engine.stats()
    body = {"status": "ok" if stats.is_alive else "error", "model": slot.model.id,
            "engine": {"running": stats.num_running, "waiting": stats.num_waiting,
                       "free_blocks": stats.num_free_blocks, "total_blocks": stats.num_total_blocks,
                       "preemptions": stats.num_preemptions, "aborted": stats.num_aborted,
                       "finished": stats.num_finished, "error": stats.error}}
    return JSONResponse(body, status_code=200 if stats.is_alive else 503)


async def list_models(request: Request) -> Response:
    model = request.app.state.slot.require()
    card = {"id": model.id, "object": "model", "created": model.created, "owned_by": "infermcp",
            "root": model.id, "max_model_len": model.max_model_len}
    return JSONResponse({"object": "list", "data": [card]})


def create_app(load: Callable[[], ServedModel], on_load_error: Callable[[str], None] | None = None
               ) -> Starlette:
    """The OpenAI-compatible app; ``load`` runs in a background thread at startup."""
    slot = ModelSlot(load, on_load_error or (lambda msg: log.error("model failed: %s", msg)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        slot.start()
        yield
        if slot.model is not None:
            slot.model.engine.shutdown()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/completions", completions.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.slot = slot
    return app
