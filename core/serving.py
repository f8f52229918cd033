"""A served model: loading it end to end, and the request helpers both front ends share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core import loader
from core.async_engine import AsyncEngine, RequestStream
from core.engine import EngineConfig, LLMEngine
from core.errors import EngineUnavailableError, InferError, ModelNotFoundError
from core.grammar import GrammarCompiler
from core.model_runner import ModelRunner
from core.output_processor import OutputProcessor
from core.outputs import EngineRequest
from core.sequence import TokenLogprob
from core.tokenizer import Tokenizer


@dataclass
class ServedModel:
    """One loaded chat/completion model: its id, tokenizer and running engine."""

    id: str
    tokenizer: Tokenizer
    engine: AsyncEngine
    dtype: str
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def max_model_len(self) -> int:
        return self.engine.max_seq_len

    def card(self) -> dict[str, Any]:
        """What both front ends say about this model (OpenAI model object plus our details)."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "infermcp",
                "root": self.id, "max_model_len": self.max_model_len, "dtype": self.dtype,
                "kind": "chat", "capabilities": ["chat", "completion"]}

    def check_model_name(self, name: str | None) -> None:
        """``name`` must be this model's id or ``default`` (a missing name means default)."""
        if name not in (None, "", "default", self.id):
            raise ModelNotFoundError(f"The model '{name}' does not exist. Available models: "
                                     f"'{self.id}' (or 'default').")


class ModelSlot:
    """Holds the served model once it has loaded (in a background thread), or the load error."""

    def __init__(self, load: Callable[[], ServedModel], on_error: Callable[[str], None]) -> None:
        self._load = load
        self._on_error = on_error
        self.model: ServedModel | None = None
        self.error: str | None = None
        self._started = False
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Begin loading in a background thread (once; later calls do nothing)."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
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

    def shutdown(self) -> None:
        if self.model is not None:
            self.model.engine.shutdown()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, report): loading, failed to load, or the engine's load and liveness."""
        if self.model is None:
            return False, {"status": "error" if self.error else "loading", "error": self.error}
        stats = self.model.engine.stats()
        return stats.is_alive, {
            "status": "ok" if stats.is_alive else "error", "model": self.model.id,
            "engine": {"running": stats.num_running, "waiting": stats.num_waiting,
                       "free_blocks": stats.num_free_blocks,
                       "total_blocks": stats.num_total_blocks,
                       "preemptions": stats.num_preemptions, "aborted": stats.num_aborted,
                       "finished": stats.num_finished, "error": stats.error}}

    def require(self) -> ServedModel:
        if self.model is None:
            raise EngineUnavailableError(self.error or "the model is still loading; retry shortly",
                                         code="model_loading" if self.error is None else None)
        return self.model


@dataclass(frozen=True)
class LoadOptions:
    model: str | None = None
    served_model_name: str | None = None
    dtype: str = "auto"
    max_seqs: int = 16
    max_seq_len: int = 2048
    kv_cache_tokens: int | None = None
    seed: int | None = None

def load_served_model(options: LoadOptions) -> ServedModel:
    """Resolve, convert if needed, load and start the engine; raises ModelLoadError."""
    source = loader.resolve(options.model, options.served_model_name)
    tokenizer = Tokenizer.load(source.model_dir)
    kv_tokens = options.kv_cache_tokens or max(options.max_seq_len,
                                               min(options.max_seqs * options.max_seq_len, 65536))
    runner = ModelRunner(source.model_dir, options.dtype, kv_cache_tokens=kv_tokens)
    config = EngineConfig(max_seqs=options.max_seqs, max_seq_len=options.max_seq_len,
                          seed=options.seed)
    llm = LLMEngine(runner, config)
    grammars = GrammarCompiler(tokenizer.hf_tokenizer, runner.config.vocab_size)
    engine = AsyncEngine(llm, OutputProcessor(llm, tokenizer, grammars), grammars)
    engine.start()
    dtype = str(runner.dtype).removeprefix("torch.")
    return ServedModel(source.served_id, tokenizer, engine, dtype)

@dataclass
class Completion:
    """A whole generation gathered from its stream of outputs."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0

async def collect(stream: RequestStream) -> Completion:
    """Drain a request's output stream into one :class:`Completion` (aborting it if cancelled)."""
    result = Completion()
    async with stream:
        async for out in stream:
            result.text += out.text
            result.token_ids += out.token_ids
            result.logprobs += out.logprobs
            result.finish_reason = out.finish_reason
            result.num_prompt_tokens = out.num_prompt_tokens
            result.num_output_tokens = out.num_output_tokens
    return result


__all__ = ["Completion", "EngineRequest", "LoadOptions", "ServedModel", "collect",
           "load_served_model"]
