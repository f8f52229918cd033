"""Prefix caching, measured on the engine alone: time to first token of a request whose long
system prompt is not cached yet, then of a second request that shares it.

Run from the repo root: ``python -m bench.prefix_bench [--system-tokens 1000]``.
"""

from __future__ import annotations

import argparse
import time

from bench.engine_bench import build_engine
from core.engine.llm_engine import LLMEngine
from core.engine.params import SamplingParams


def first_token_s(engine: LLMEngine, request_id: str, prompt: list[int]) -> float:
    params = SamplingParams(temperature=0, max_tokens=1)
    engine.add(engine.new_sequence(request_id, prompt, params, 1))
    start = time.perf_counter()
    while not engine.step():
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--user-tokens", type=int, default=24)
    args = parser.parse_args()
    engine = build_engine()
    first_token_s(engine, "warm-up", [5, 6, 7])
    system = [100 + (7 * i) % 5000 for i in range(args.system_tokens)]
    cold = first_token_s(engine, "a", system + [9000 + i for i in range(args.user_tokens)])
    warm = first_token_s(engine, "b", system + [9500 + i for i in range(args.user_tokens)])
    hits = engine.scheduler.num_prefix_hits
    print(f"system prompt {args.system_tokens} tokens, user {args.user_tokens}: first request "
          f"{cold * 1000:.0f} ms, second {warm * 1000:.0f} ms ({cold / warm:.1f}x faster; "
          f"{hits} prompt tokens read from the prefix cache)")


if __name__ == "__main__":
    main()
