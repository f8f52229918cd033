"""A typed fake of the served model for front-end tests: scripted outputs, no torch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.testclient import TestClient

from core.engine.outputs import EngineRequest, EngineStats, RequestOutput
from core.errors import InferError, OverloadedError
from core.serving.registry import ModelEntry, ModelRegistry


class FakeTokenizer:
    """One token per character (ids are code points)."""

    supports_tools = False
    chat_template = ""
    vocab_size = 0x110000

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)

    def token_text(self, token_id: int) -> str:
        return chr(token_id)

    def encode_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        return self.encode("".join(_text(m["content"]) for m in messages))


def _text(content: str | list[dict[str, Any]]) -> str:
    """A message's text; each loaded image as <image WxH>."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] if p["type"] == "text" else
                   f"<image {p['image'].width}x{p['image'].height}>" for p in content)


class FakeStream:
    def __init__(self, engine: FakeEngine, request: EngineRequest) -> None:
        self.request_id = request.request_id
        self.prompt_token_ids = request.prompt_token_ids
        self._engine = engine
        self._words = list(engine.words)
        self._sent = 0
        self._finished = False
        self.on_output: Callable[[RequestOutput], None] | None = None

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._sent == len(self._words):
            raise StopAsyncIteration
        await asyncio.sleep(self._engine.delay)
        if self._engine.fail_after is not None and self._sent == self._engine.fail_after:
            raise InferError("the engine failed: boom")
        word = self._words[self._sent]
        self._sent += 1
        last = self._finished = self._sent == len(self._words)
        out = RequestOutput(self.request_id, text=word, token_ids=[ord(word[0])],
                            finish_reason=self._engine.finish_reason if last else None,
                            num_prompt_tokens=len(self.prompt_token_ids),
                            num_output_tokens=self._sent)
        if self.on_output is not None:
            self.on_output(out)
        return out

    def abort(self) -> None:
        """Like RequestStream: leaving a stream before its last output aborts it (once)."""
        if not self._finished:
            self._finished = True
            self._engine.aborted.append(self.request_id)

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.abort()


@dataclass
class FakeEngine:
    words: tuple[str, ...] = ("Hello", " there", "!")
    delay: float = 0.0
    fail_after: int | None = None
    finish_reason: str = "stop"
    aborted: list[str] = field(default_factory=list)
    max_seq_len: int = 64
    requests: list[EngineRequest] = field(default_factory=list)
    overloaded: bool = False  # check_capacity refuses everything, as a full queue does

    def check_capacity(self, num_seqs: int) -> None:
        if self.overloaded:
            raise OverloadedError("the server is at capacity; retry after 2 s", retry_after=2)

    def generate(self, request: EngineRequest) -> FakeStream:
        self.check_capacity(1)
        self.requests.append(request)
        return FakeStream(self, request)

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 10, 10, 0, len(self.aborted), 0, True, None)

    def shutdown(self) -> None:
        return None


@dataclass
class FakeModel:
    engine: FakeEngine = field(default_factory=FakeEngine)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    id: str = "fake-model"
    dtype: str = "float32"
    created: int = 0
    kind: str = "chat"
    input_modalities: tuple[str, ...] = ("text",)
    prompter: Any = None  # a vision model's processor: the fake tokenizer renders images

    @property
    def max_model_len(self) -> int:
        return self.engine.max_seq_len

    def card(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": 0, "owned_by": "infermcp",
                "root": self.id, "max_model_len": self.max_model_len, "dtype": self.dtype,
                "kind": "chat", "capabilities": ["chat", "completion"]}

    def health(self) -> tuple[bool, dict[str, Any]]:
        stats = self.engine.stats()
        return True, {"status": "ok", "kind": "chat", "model": self.id, "engine": {
            "running": stats.num_running, "waiting": stats.num_waiting,
            "aborted": stats.num_aborted, "finished": stats.num_finished}}

    def shutdown(self) -> None:
        self.engine.shutdown()


@dataclass
class FakeEmbeddingModel:
    """An embedding model for routing tests (it is never asked to encode)."""

    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    id: str = "fake-encoder"
    max_model_len: int = 32
    kind: str = "embedding"

    def card(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": 0, "owned_by": "infermcp",
                "root": self.id, "max_model_len": self.max_model_len, "dtype": "float32",
                "kind": "embedding", "capabilities": ["embeddings"], "dimensions": 4}

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok", "kind": "embedding", "encoder": {"batches": 0}}

    def shutdown(self) -> None:
        return None


def fake_registry(*models: Any) -> ModelRegistry:
    """A registry serving ``models`` (default: one FakeModel), loaded at app start-up."""
    models = models or (FakeModel(),)
    return ModelRegistry([ModelEntry(m.id, m.kind, lambda m=m: m) for m in models])


@contextmanager
def running(app: Starlette) -> Iterator[TestClient]:
    """A TestClient over ``app`` once every model has loaded (server errors become 500s)."""
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(500):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the fake models never loaded")
        yield client
