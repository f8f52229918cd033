"""Engine-only micro-benchmark (no HTTP): decode tokens/s of the default model by batch size.

Run from the repo root: ``python -m bench.engine_bench [--batches 1,4,16] [--tokens 64]``.
"""

from __future__ import annotations

import argparse
import time

from core import loader
from core.engine import EngineConfig, LLMEngine
from core.model_runner import ModelRunner
from core.params import SamplingParams


def decode_rate(engine: LLMEngine, batch: int, tokens: int, prompt_len: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for ``batch`` greedy sequences of ``tokens`` tokens."""
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    for i in range(batch):
        prompt = [(7 * i + j) % 1000 + 100 for j in range(prompt_len)]
        engine.add(engine.new_sequence(f"b{i}", prompt, params, tokens))
    start = time.perf_counter()
    engine.step()  # prefill of the whole batch
    prefill = time.perf_counter() - start
    produced, start = 0, time.perf_counter()
    while engine.scheduler.has_work:
        produced += len(engine.step())
    return prefill, produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    runner = ModelRunner(loader.resolve(None).model_dir, args.dtype, kv_cache_tokens=65536)
    engine = LLMEngine(runner, EngineConfig(max_seqs=64, max_seq_len=2048))
    decode_rate(engine, 1, 8, args.prompt_len)  # warm-up
    print(f"| batch | prefill s | decode tok/s |  ({args.dtype}, {args.tokens} tokens)")
    print("|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        prefill, rate = decode_rate(engine, batch, args.tokens, args.prompt_len)
        print(f"| {batch} | {prefill:.3f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
