"""Cost of constrained decoding: decode tokens/s with and without a JSON-schema grammar.

Run from the repo root: ``python -m bench.grammar_bench [--tokens 64] [--batch 1]``.
Both variants run alternately in one process so machine drift hits them alike.
"""

from __future__ import annotations

import argparse
import time

from core.engine.grammar import GrammarCompiler
from core.engine.llm_engine import EngineConfig, LLMEngine
from core.engine.model_runner import ModelRunner
from core.engine.params import GrammarSpec, SamplingParams
from core.models import loader
from core.models.tokenizer import Tokenizer

SCHEMA = {"type": "object", "required": ["story"],
          "properties": {"story": {"type": "string", "minLength": 2000}}}


def rate(engine: LLMEngine, grammars: GrammarCompiler | None, batch: int, tokens: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    for i in range(batch):
        seq = engine.new_sequence(f"g{i}", [100 + i, 200, 300, 400], params, tokens)
        if grammars is not None:
            seq.constraint = grammars.matcher(GrammarSpec("json_schema", SCHEMA))
        engine.add(seq)
    engine.step()  # prefill
    produced, start = 0, time.perf_counter()
    while engine.scheduler.has_work:
        produced += len(engine.step())
    return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_dir = loader.resolve(None).model_dir
    runner = ModelRunner(model_dir, "auto", kv_cache_tokens=16384)
    engine = LLMEngine(runner, EngineConfig(max_seqs=32))
    grammars = GrammarCompiler(Tokenizer.load(model_dir).hf_tokenizer, runner.config.vocab_size)
    grammars.matcher(GrammarSpec("regex", "a"))  # build the llguidance tokenizer once
    free, bound = [], []
    for _ in range(args.rounds):
        free.append(rate(engine, None, args.batch, args.tokens))
        bound.append(rate(engine, grammars, args.batch, args.tokens))
    best_free, best_bound = max(free), max(bound)
    print(f"batch {args.batch}: free {best_free:.1f} tok/s, json-schema {best_bound:.1f} tok/s "
          f"({100 * (1 - best_bound / best_free):.1f}% slower)")


if __name__ == "__main__":
    main()
