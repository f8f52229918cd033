"""A served model: loading it end to end, and the request helpers both front ends share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core import loader
from core.async_engine import AsyncEngine, RequestStream
from core.engine import EngineConfig, LLMEngine
from core.errors import ModelNotFoundError
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

    def check_model_name(self, name: str | None) -> None:
        """``name`` must be this model's id or ``default`` (a missing name means default)."""
        if name not in (None, "", "default", self.id):
            raise ModelNotFoundError(f"The model '{name}' does not exist. Available models: "
                                     f"'{self.id}' (or 'default').")

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
    engine = AsyncEngine(llm, OutputProcessor(llm, tokenizer))
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
