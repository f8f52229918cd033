"""The served models and the one routing of the ``model`` field that both front ends use.

A :class:`ModelRegistry` holds one :class:`ModelEntry` per served model (chat or embedding). It
loads them one after another in a background thread; until a model is loaded, requests for it
are 503 ``model_loading`` and ``/health`` is 503. ``chat_model(name)`` and
``embedding_model(name)`` turn a request's ``model`` field into a loaded model: its id, one of
its aliases, or ``default`` (the default model of that kind).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from core.chat.images import ImagePolicy
from core.engine import threads
from core.errors import (
    EngineUnavailableError,
    InferError,
    ModelKindError,
    ModelNotFoundError,
)
from core.serving.specs import ModelKind, ModelSpec, check_specs

if TYPE_CHECKING:
    from core.engine.model_runner import ModelRunner
    from core.models.tokenizer import Tokenizer
    from core.serving.chat_model import ServedModel
    from core.serving.embedding_model import EmbeddingModel
    from core.serving.telemetry import GenerationObserver

SERVES: dict[ModelKind, str] = {"chat": "chat and text completions", "embedding": "embeddings"}


class Served(Protocol):
    """What the registry needs of a loaded model (ServedModel, EmbeddingModel, test fakes)."""

    id: str
    kind: ModelKind
    tokenizer: Tokenizer

    @property
    def max_model_len(self) -> int: ...
    def card(self) -> dict[str, Any]: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def shutdown(self) -> None: ...


@dataclass
class ModelEntry:
    """One model to serve: its names and kind (known before loading) and how to load it."""

    id: str
    kind: ModelKind
    load: Callable[[], Served]
    aliases: tuple[str, ...] = ()
    default: bool = False
    model: Served | None = None
    error: str | None = None
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.names = (self.id, *self.aliases)

    @property
    def status(self) -> str:
        return "error" if self.error else "loading" if self.model is None else "ok"

    def label(self) -> str:
        also = f" (alias {', '.join(repr(a) for a in self.aliases)})" if self.aliases else ""
        return f"{self.id!r}{also}"


class ModelRegistry:
    """The served models, loaded in the background, and request routing by name and kind."""

    def __init__(self, entries: list[ModelEntry],
                 on_error: Callable[[str], None] = lambda message: None,
                 image_policy: ImagePolicy | None = None) -> None:
        self.entries = entries
        self.image_policy = image_policy or ImagePolicy()  # what requests' images may be
        self._on_error = on_error
        self._by_name = {name: e for e in entries for name in e.names}
        self.defaults: dict[str, ModelEntry] = {}  # kind -> the marked entry, else the first
        for entry in entries:
            if entry.default or entry.kind not in self.defaults:
                self.defaults[entry.kind] = entry if entry.default else \
                    self.defaults.get(entry.kind, entry)
        self._started = False
        self._start_lock = threading.Lock()
        self.settled = threading.Event()  # every model loaded, or one failed
        self.observers: list[GenerationObserver] = []  # see every generation (metrics)
        self.draining = False

    def start(self) -> None:
        """Begin loading in a background thread (once; later calls do nothing)."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load_all, name="infermcp-load", daemon=True).start()

    def _load_all(self) -> None:
        for entry in sorted(self.entries, key=lambda e: e is not self.defaults.get(e.kind)):
            try:
                entry.model = entry.load()
            except InferError as exc:
                entry.error = exc.message
            except Exception as exc:  # a broken checkpoint can raise anything
                entry.error = f"{type(exc).__name__}: {exc}"
            if entry.error is not None:
                self._on_error(entry.error)
                break
        self.settled.set()

    def drain(self) -> None:
        """Refuse new requests (503 ``shutting_down``); those in flight go on."""
        self.draining = True

    def shutdown(self) -> None:
        """Stop every loaded model; requests still in flight end with a 503 error. Idempotent."""
        self.draining = True
        for entry in self.entries:
            if entry.model is not None:
                entry.model.shutdown()

    def chat_model(self, name: str | None) -> ServedModel:
        """The loaded chat model ``name`` routes to (``None``, ``""`` or ``default``: the
        default chat model)."""
        return cast("ServedModel", self.route(name, "chat"))

    def embedding_model(self, name: str | None) -> EmbeddingModel:
        """The loaded embedding model ``name`` routes to."""
        return cast("EmbeddingModel", self.route(name, "embedding"))

    def route(self, name: str | None, kind: ModelKind) -> Served:
        """404 for an unknown name, 400 for a model of another kind, 503 while loading or
        shutting down. ``name`` is only ever looked up, never used as a path."""
        if self.draining:
            raise EngineUnavailableError("the server is shutting down", code="shutting_down")
        entry: ModelEntry | None
        if name in (None, "", "default"):
            entry = self.defaults.get(kind)
            if entry is None:
                raise ModelKindError(f"no {kind} model is served, so nothing can serve "
                                     f"{SERVES[kind]}. Served models: {self._available()}.")
        else:
            entry = self._by_name.get(name)
            if entry is None:
                raise ModelNotFoundError(f"The model '{name}' does not exist. Available models: "
                                         f"{self._available()}; or 'default'.")
        if entry.kind != kind:
            able = [e.label() for e in self.entries if e.kind == kind]
            raise ModelKindError(
                f"'{name}' is {'an' if entry.kind[0] in 'aeiou' else 'a'} {entry.kind} model and "
                f"cannot serve {SERVES[kind]}. Models that can: "
                f"{', '.join(able) + ' or ' + repr('default') if able else 'none on this server'}.")
        if entry.model is None:
            if entry.error is not None:
                raise EngineUnavailableError(f"the model {entry.id!r} failed to load: "
                                             f"{entry.error}")
            raise EngineUnavailableError(f"the model {entry.id!r} is still loading; retry shortly",
                                         code="model_loading")
        return entry.model

    def any_model(self, name: str | None) -> Served:
        """The loaded model ``name`` routes to, whatever its kind (``default``: the default
        chat model, else the default embedding model)."""
        if name in (None, "", "default"):
            return self.route(name, "chat" if "chat" in self.defaults else "embedding")
        entry = self._by_name.get(name)
        return self.route(name, entry.kind if entry is not None else "chat")

    def _available(self) -> str:
        return ", ".join(f"{e.label()} ({e.kind})" for e in self.entries)

    def cards(self) -> list[dict[str, Any]]:
        """Every loaded model's card, the default chat model first (clients that name no model
        read ``data[0]``); 503 while none has loaded yet."""
        chat = self.defaults.get("chat")
        ordered = sorted(self.entries, key=lambda e: e is not chat)
        cards = [e.model.card() for e in ordered if e.model is not None]
        if not cards:
            first = self.entries[0]
            raise EngineUnavailableError(first.error or "the models are still loading; retry "
                                         "shortly", code=None if first.error else "model_loading")
        return cards

    def card(self, name: str) -> dict[str, Any]:
        """One model's card by id, alias, the id with '/' written as '--', or ``default``
        (the default chat model, else the first one)."""
        entry: ModelEntry | None
        if name == "default":
            entry = self.defaults.get("chat") or self.entries[0]
        else:
            entry = self._by_name.get(name) or self._by_name.get(name.replace("--", "/"))
        if entry is None:
            raise ModelNotFoundError(f"The model '{name}' does not exist. Available models: "
                                     f"{self._available()}.")
        return self.route(entry.id, entry.kind).card()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, report): each model's status, and the default chat model's engine load."""
        models: dict[str, dict[str, Any]] = {}
        healthy = True
        for entry in self.entries:
            report: dict[str, Any] = {"status": entry.status, "kind": entry.kind}
            if entry.model is not None:
                ok, report = entry.model.health()
                healthy = healthy and ok
            else:
                healthy = False
                report["error"] = entry.error
            models[entry.id] = report
        statuses = {r["status"] for r in models.values()}
        status = "ok" if healthy else "error" if "error" in statuses else "loading"
        if self.draining:
            healthy, status = False, "shutting_down"
        errors = [e.error for e in self.entries if e.error]
        errors += [r["error"] for r in models.values() if r.get("error")]
        result: dict[str, Any] = {"status": status, "models": models, "cpu": threads.report()}
        if errors:
            result["error"] = errors[0]
        chat = self.defaults.get("chat")
        if chat is not None:
            result["model"] = chat.id
            if "engine" in models[chat.id]:
                result["engine"] = models[chat.id]["engine"]
        return healthy, result


def build_registry(specs: list[ModelSpec], on_error: Callable[[str], None] = lambda m: None,
                   on_loaded: Callable[[Served], None] = lambda m: None,
                   image_policy: ImagePolicy | None = None) -> ModelRegistry:
    """A registry that loads ``specs``; chat models on one checkpoint share its weights;
    requests' images are held to ``image_policy`` (default: :class:`ImagePolicy`'s)."""
    from core.serving.chat_model import load_chat_model
    from core.serving.embedding_model import load_embedding_model

    check_specs(specs)
    runners: dict[Any, ModelRunner] = {}

    def loader_for(spec: ModelSpec) -> Callable[[], Served]:
        def load() -> Served:
            model: Served
            if spec.kind == "embedding":
                model = load_embedding_model(spec)
            else:
                model = load_chat_model(spec, runners)
            on_loaded(model)
            return model

        return load

    return ModelRegistry([ModelEntry(s.served_id, s.kind, loader_for(s), s.aliases, s.default)
                          for s in specs], on_error, image_policy)
