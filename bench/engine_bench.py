"""Engine-only micro-benchmark (no HTTP): decode tokens/s of the default model by batch size,
and where a decode step's time goes.

Run from the repo root: ``python -m bench.engine_bench [--model F] [--batches 1,4,16] [--tokens 64]
[--isq int8] [--eager]``. The profile split times each part of ``LLMEngine.step`` (schedule,
the model's forward pass and LM head, sampling, the rest) over the decode steps of each batch
size.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.engine.llm_engine import EngineConfig, LLMEngine
from core.engine.model_runner import ModelRunner
from core.engine.params import SamplingParams
from core.models import loader


class StepProfile:
    """Wall time spent inside a few engine methods, by name (wrapping them in place)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        runner = engine.runner
        engine.scheduler.schedule = self._timed("schedule", engine.scheduler.schedule)  # type: ignore[method-assign]
        runner._prepare = self._timed("prepare inputs", runner._prepare)  # type: ignore[method-assign]
        runner._forward = self._timed("forward", runner._forward)  # type: ignore[method-assign]
        model = runner.model
        model.logits = self._timed("lm head", model.logits)  # type: ignore[method-assign]
        engine.sampler = _Timed(self, "sample", engine.sampler)  # type: ignore[assignment]
        engine.step = self._timed("step", engine.step)  # type: ignore[method-assign]

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return wrapper

    def reset(self) -> None:
        self.seconds.clear()

    def split(self) -> dict[str, float]:
        """Each part's share of the step time; ``other`` is what no part accounts for."""
        step = self.seconds["step"] or 1e-9
        parts = {k: v / step for k, v in self.seconds.items() if k != "step"}
        parts["other (postprocess, Python)"] = 1 - sum(parts.values())
        return parts


class _Timed:
    def __init__(self, profile: StepProfile, name: str, target: Any) -> None:
        self._call = profile._timed(name, target.__call__)
        self._target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def decode_rate(engine: LLMEngine, batch: int, tokens: int, prompt_len: int,
                profile: StepProfile | None = None) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for ``batch`` greedy sequences of ``tokens`` tokens."""
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    for i in range(batch):
        prompt = [(7 * i + j + 13 * batch) % 1000 + 100 for j in range(prompt_len)]
        engine.add(engine.new_sequence(f"b{i}", prompt, params, tokens))
    start = time.perf_counter()
    while any(s.num_uncomputed_tokens > 1 for s in engine.scheduler.running) or \
            engine.scheduler.waiting:
        engine.step()  # prefill of the whole batch (in chunks of max_batched_tokens)
    prefill = time.perf_counter() - start
    if profile is not None:
        profile.reset()
    produced, start = 0, time.perf_counter()
    while engine.scheduler.has_work:
        produced += len(engine.step())
    return prefill, produced / (time.perf_counter() - start)


def warm_up(engine: LLMEngine, prompt_len: int = 64) -> None:
    """Run one row and then two, so that timed runs include neither first-call costs nor the
    recording of a decode graph (one per path: one row, several rows)."""
    for batch in (1, 2):
        decode_rate(engine, batch, 8, prompt_len)


def build_engine(isq: str = "auto", dtype: str = "auto", eager: bool = False,
                 model: str | None = None) -> LLMEngine:
    source = loader.resolve(model)
    runner = ModelRunner(source.model_dir, dtype, kv_cache_tokens=65536, quantization=isq,
                         decode_graphs=not eager, gguf=source.gguf)
    return LLMEngine(runner, EngineConfig(max_seqs=64, max_seq_len=2048,
                                          max_batched_tokens=4096))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="a GGUF file or model directory (default: the bundled one)")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--isq", default="auto", help="weight format (default: the server's, auto)")
    parser.add_argument("--eager", action="store_true",
                        help="run decode steps eagerly, without recorded graphs")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    engine = build_engine(args.isq, args.dtype, args.eager, args.model)
    warm_up(engine, args.prompt_len)
    profile = StepProfile(engine)
    lines = [
        "# Engine alone (`python -m bench.engine_bench`)",
        "",
        f"Model {args.model or 'the bundled default'}, dtype {args.dtype}, "
        f"isq {engine.runner.quantization}, "
        f"decode {'graphs' if engine.runner.graphs else 'eager'}, "
        f"{torch.get_num_threads()} "
        f"threads, greedy decode of {args.tokens} tokens after a {args.prompt_len}-token prompt. "
        "The split is each part's share of the decode steps' wall time.",
        "",
        "| batch | prefill s | decode tok/s | ms/step | forward + LM head | split |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        prefill, rate = decode_rate(engine, batch, args.tokens, args.prompt_len, profile)
        split = profile.split()
        model_share = split.get("forward", 0) + split.get("lm head", 0)
        detail = ", ".join(f"{k} {v:.0%}" for k, v in sorted(split.items(), key=lambda x: -x[1]))
        lines.append(f"| {batch} | {prefill:.3f} | {rate:.1f} | {1000 * batch / rate:.1f} | "
                     f"{model_share:.0%} | {detail} |")
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
