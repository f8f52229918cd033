"""A served chat model: loading it end to end, and gathering a generation's outputs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.engine import faults
from core.engine.async_engine import AdmissionLimits, AsyncEngine, RequestStream
from core.engine.grammar import GrammarCompiler
from core.engine.llm_engine import EngineConfig, LLMEngine
from core.engine.model_runner import ModelRunner
from core.engine.output_processor import OutputProcessor
from core.engine.outputs import EngineRequest, OutputFinishReason
from core.engine.sequence import TokenLogprob
from core.models import formats, loader
from core.models.dtypes import resolve_dtype
from core.models.tokenizer import Tokenizer
from core.models.vision.processor import ImagePrompter
from core.serving.specs import ModelKind, ModelSpec


@dataclass
class ServedModel:
    """One loaded chat/completion model: its id, tokenizer and running engine."""

    id: str
    tokenizer: Tokenizer
    engine: AsyncEngine
    dtype: str
    aliases: tuple[str, ...] = ()
    kv_cache_dtype: str = ""  # what its KV cache holds (float32, float16, bfloat16)
    created: int = field(default_factory=lambda: int(time.time()))
    kind: ModelKind = "chat"
    quantization: str = "none"
    weight_bytes: int = 0
    architecture: str = ""  # the checkpoint's model type (llama, qwen2, qwen3, ...)
    input_modalities: tuple[str, ...] = ("text",)  # what its prompts may hold: text, image
    prompter: ImagePrompter | None = None  # a vision model's processor (renders images)

    @property
    def max_model_len(self) -> int:
        return self.engine.max_seq_len

    def card(self) -> dict[str, Any]:
        """What both front ends say about this model (OpenAI model object plus our details)."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "infermcp",
                "root": self.id, "max_model_len": self.max_model_len, "dtype": self.dtype,
                "kind": "chat", "capabilities": ["chat", "completion"],
                "aliases": list(self.aliases), "quantization": self.quantization,
                "weight_bytes": self.weight_bytes, "architecture": self.architecture,
                "input_modalities": list(self.input_modalities),
                "kv_cache_dtype": self.kv_cache_dtype}

    async def quantize(self, kind: str) -> None:
        """Re-quantize the weights in place (see :mod:`core.models.quant`); requests in flight pause
        for the swap between two engine steps and then go on with the new weights."""
        kind = formats.resolve(kind)

        def swap(engine: LLMEngine) -> tuple[str, int]:
            engine.requantize(kind)
            return engine.runner.quantization, engine.runner.weight_bytes  # auto, resolved

        self.quantization, self.weight_bytes = await self.engine.call(swap)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, report) of the engine: its load and whether its thread is alive."""
        stats = self.engine.stats()
        report: dict[str, Any] = {
            "status": "ok" if stats.is_alive else "error", "kind": "chat",
            "engine": {"running": stats.num_running, "waiting": stats.num_waiting,
                       "free_blocks": stats.num_free_blocks,
                       "total_blocks": stats.num_total_blocks,
                       "preemptions": stats.num_preemptions, "aborted": stats.num_aborted,
                       "finished": stats.num_finished, "rejected": stats.num_rejected,
                       "timed_out": stats.num_timed_out, "failed": stats.num_failed,
                       "error": stats.error,
                       "prefix_cache": {"queried_tokens": stats.num_prefix_queries,
                                        "hit_tokens": stats.num_prefix_hits}}}
        if not stats.is_alive:
            report["error"] = stats.error or "the server is shutting down"
        return stats.is_alive, report

    def shutdown(self) -> None:
        self.engine.shutdown()


def load_chat_model(spec: ModelSpec, runners: dict[tuple[Path, str], ModelRunner] | None = None
                    ) -> ServedModel:
    """Resolve, convert if needed, load and start the engine; raises ModelLoadError.

    ``runners`` holds the runners loaded so far by checkpoint and dtype: a second model on the
    same checkpoint shares the first one's weights (it gets its own KV cache and engine).
    """
    source = loader.resolve(spec.path, spec.served_id, tokenizer=False)
    gguf = source.gguf
    if gguf is None:  # a checkpoint's vision tower imports transformers as it loads
        runner = _runner(source, spec, runners)
        tokenizer = Tokenizer.load(source.model_dir)
    else:  # the tokenizer, maybe still building in build_ahead's helper, is waited for and
        # loaded by a thread of its own beside the weights, which imports transformers first
        def load_tokenizer() -> Tokenizer:
            Tokenizer.import_backend()
            return Tokenizer.load(loader.gguf_metadata(gguf))

        with ThreadPoolExecutor(1, thread_name_prefix="infermcp-tokenizer") as pool:
            tokenizer_loaded = pool.submit(load_tokenizer)
            runner = _runner(source, spec, runners)
            tokenizer = tokenizer_loaded.result()
    max_seq_len = spec.max_seq_len or 2048
    config = EngineConfig(max_seqs=spec.max_seqs, max_seq_len=max_seq_len, seed=spec.seed,
                          max_batched_tokens=spec.max_batched_tokens,
                          enable_prefix_caching=spec.prefix_caching)
    llm = LLMEngine(runner, config)
    grammars = GrammarCompiler(tokenizer.hf_tokenizer, runner.config.vocab_size)
    limits = AdmissionLimits(max_queue=spec.max_queue, request_timeout=spec.request_timeout)
    engine = AsyncEngine(llm, OutputProcessor(llm, tokenizer, grammars), grammars, limits,
                         faults.from_env())
    engine.start()
    dtype = str(runner.dtype).removeprefix("torch.")
    prompter = None if runner.vision_type is None \
        else ImagePrompter(source.model_dir, runner.vision_type)
    return ServedModel(source.served_id, tokenizer, engine, dtype, spec.aliases,
                       kv_cache_dtype=str(runner.kv_dtype).removeprefix("torch."),
                       quantization=runner.quantization, weight_bytes=runner.weight_bytes,
                       architecture=runner.vision_type or runner.config.model_type,
                       input_modalities=("text", "image") if prompter else ("text",),
                       prompter=prompter)


def _runner(source: loader.ModelSource, spec: ModelSpec,
            runners: dict[tuple[Path, str], ModelRunner] | None) -> ModelRunner:
    """The model's weights and KV cache, sharing the weights of a runner in ``runners`` on the
    same checkpoint and dtype."""
    max_seq_len = spec.max_seq_len or 2048
    kv_tokens = spec.kv_cache_tokens or max(max_seq_len, min(spec.max_seqs * max_seq_len, 65536))
    key = (source.model_dir.resolve(), str(resolve_dtype(spec.dtype)))
    runner = ModelRunner(source.model_dir, spec.dtype, kv_cache_tokens=kv_tokens,
                         weights_from=(runners or {}).get(key), quantization=spec.isq,
                         decode_graphs=not spec.enforce_eager, gguf=source.gguf,
                         kv_cache_dtype=spec.kv_cache_dtype, max_seq_len=max_seq_len)
    if runners is not None:
        runners.setdefault(key, runner)
    return runner


@dataclass
class Completion:
    """A whole generation gathered from its stream of outputs."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: OutputFinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
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
            result.num_cached_tokens = out.num_cached_tokens
            result.num_output_tokens = out.num_output_tokens
    return result


__all__ = ["Completion", "EngineRequest", "ServedModel", "collect", "load_chat_model"]
