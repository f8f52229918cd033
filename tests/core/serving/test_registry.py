"""Routing the `model` field: ids, aliases, per-kind defaults, and the errors both front ends
return (404 unknown, 400 wrong kind, 503 loading)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from core.errors import EngineUnavailableError, ModelKindError, ModelNotFoundError
from core.serving.registry import ModelEntry, ModelRegistry


@dataclass
class Fake:
    id: str
    kind: str

    def card(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind}

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok", "kind": self.kind}

    def shutdown(self) -> None:
        return None


def entry(id: str, kind: str = "chat", **kwargs: Any) -> ModelEntry:
    return ModelEntry(id, kind, lambda: Fake(id, kind), **kwargs)


def loaded(*entries: ModelEntry) -> ModelRegistry:
    registry = ModelRegistry(list(entries))
    registry.start()
    for _ in range(500):
        if all(e.model is not None for e in entries):
            return registry
        time.sleep(0.01)
    raise AssertionError("fakes never loaded")


@pytest.fixture
def registry() -> ModelRegistry:
    return loaded(entry("chat-a", aliases=("a",)), entry("chat-b", default=True),
                  entry("enc", "embedding", aliases=("e",)))


def test_names_aliases_and_defaults(registry: ModelRegistry) -> None:
    assert registry.route("chat-a", "chat").id == "chat-a"
    assert registry.route("a", "chat").id == "chat-a"
    for name in (None, "", "default"):
        assert registry.chat_model(name).id == "chat-b"  # marked default
        assert registry.embedding_model(name).id == "enc"  # the only one
    assert registry.embedding_model("e").id == "enc"


def test_unknown_model_is_404_listing_every_model(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFoundError) as exc:
        registry.chat_model("gpt-4o")
    assert exc.value.code == "model_not_found" and exc.value.status_code == 404
    for name in ("'chat-a' (alias 'a') (chat)", "'chat-b' (chat)", "'enc' (alias 'e') (embedding)"):
        assert name in exc.value.message


def test_wrong_kind_is_400_naming_the_models_that_can(registry: ModelRegistry) -> None:
    with pytest.raises(ModelKindError) as exc:
        registry.chat_model("e")
    assert exc.value.status_code == 400 and exc.value.param == "model"
    assert "an embedding model" in exc.value.message
    assert "'chat-a' (alias 'a'), 'chat-b' or 'default'" in exc.value.message
    with pytest.raises(ModelKindError, match="Models that can: 'enc'"):
        registry.embedding_model("chat-b")


def test_no_model_of_a_kind(registry: ModelRegistry) -> None:
    chat_only = loaded(entry("c"))
    with pytest.raises(ModelKindError, match="no embedding model is served"):
        chat_only.embedding_model("default")
    with pytest.raises(ModelKindError, match="none on this server"):
        chat_only.embedding_model("c")


def test_loading_and_failed_models_are_503() -> None:
    release = threading.Event()
    errors: list[str] = []

    def slow() -> Fake:
        release.wait(5)
        return Fake("slow", "chat")

    def broken() -> Fake:
        raise RuntimeError("no weights")

    registry = ModelRegistry([ModelEntry("slow", "chat", slow),
                              ModelEntry("broken", "embedding", broken)], errors.append)
    registry.start()
    with pytest.raises(EngineUnavailableError) as exc:
        registry.chat_model("default")
    assert exc.value.code == "model_loading"
    healthy, report = registry.health()
    assert not healthy and report["status"] == "loading"
    assert report["models"]["slow"]["status"] == "loading"
    release.set()
    for _ in range(500):
        if errors:
            break
        time.sleep(0.01)
    assert errors == ["RuntimeError: no weights"]
    assert registry.chat_model("slow").id == "slow"
    with pytest.raises(EngineUnavailableError, match="failed to load: RuntimeError"):
        registry.embedding_model("broken")
    healthy, report = registry.health()
    assert not healthy and report["status"] == "error"
    assert report["models"]["slow"]["status"] == "ok"


def test_cards_and_health_report_every_model(registry: ModelRegistry) -> None:
    assert [c["id"] for c in registry.cards()] == ["chat-b", "chat-a", "enc"]  # default first
    assert registry.card("default")["id"] == "chat-b"
    assert registry.card("e")["id"] == "enc"
    with pytest.raises(ModelNotFoundError):
        registry.card("nope")
    healthy, report = registry.health()
    assert healthy and report["status"] == "ok" and report["model"] == "chat-b"
    assert set(report["models"]) == {"chat-a", "chat-b", "enc"}


def test_default_models_load_first() -> None:
    order: list[str] = []

    def make(id: str, kind: str, **kwargs: Any) -> ModelEntry:
        return ModelEntry(id, kind, lambda: order.append(id) or Fake(id, kind), **kwargs)

    loaded(make("x", "chat"), make("y", "chat", default=True), make("z", "embedding"))
    assert order == ["y", "z", "x"]


def test_draining_refuses_requests_and_turns_health_503() -> None:
    registry = loaded(entry("chat-a"))
    registry.drain()
    with pytest.raises(EngineUnavailableError) as info:
        registry.chat_model("chat-a")
    assert info.value.code == "shutting_down"
    healthy, report = registry.health()
    assert not healthy and report["status"] == "shutting_down"


@dataclass
class DeadEngineModel(Fake):
    def health(self) -> tuple[bool, dict[str, Any]]:
        return False, {"status": "error", "kind": "chat", "error": "MemoryError: out of memory"}


def test_health_names_the_reason_a_loaded_model_failed() -> None:
    registry = loaded(ModelEntry("chat-a", "chat", lambda: DeadEngineModel("chat-a", "chat")))
    healthy, report = registry.health()
    assert not healthy and report["status"] == "error"
    assert report["error"] == "MemoryError: out of memory"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "~/.ssh/id_rsa",
                                  "chat-a/../chat-a", "C:\\Windows\\win.ini"])
def test_model_names_that_look_like_paths_are_unknown_names(name: str) -> None:
    with pytest.raises(ModelNotFoundError):
        loaded(entry("chat-a")).chat_model(name)
