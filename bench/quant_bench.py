"""Run-time quantization, measured: weight memory, decode tokens/s and perplexity per type.

Run from the repo root: ``python -m bench.quant_bench [--types none,f16,int8,int5,int4,bf16]
[--out bench/quantization.md]``. Perplexity is that of the default model on the fixed text in
``tests/data/perplexity.txt``, scored in one pass over the whole text.
"""

from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path

import torch

from bench.engine_bench import build_engine, decode_rate, warm_up
from core.engine.llm_engine import LLMEngine
from core.models import loader
from core.models.attention import AttentionMetadata, ChunkContext
from core.models.tokenizer import Tokenizer

TEXT = Path("tests/data/perplexity.txt")


@torch.inference_mode()
def perplexity(engine: LLMEngine, token_ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of each token given the ones before it."""
    runner = engine.runner
    n = len(token_ids)
    slots = torch.arange(runner.block_size, runner.block_size + n)  # past the null block
    meta = AttentionMetadata(slots, [ChunkContext(n)])
    ids = torch.tensor(token_ids)
    hidden = runner.model(ids, torch.arange(n), meta)
    logprobs = torch.log_softmax(runner.model.logits(hidden[:-1]), dim=-1)
    nll = -logprobs.gather(1, ids[1:].unsqueeze(1)).mean()
    return math.exp(float(nll))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--types", default="none,f16,int8,int5,int4,bf16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--out", type=Path, default=Path("bench/quantization.md"))
    args = parser.parse_args()
    tokenizer = Tokenizer.load(loader.resolve(None).model_dir)
    text_ids = tokenizer.encode(TEXT.read_text())
    batches = [int(b) for b in args.batches.split(",")]
    engine = build_engine()
    rows = []
    for kind in args.types.split(","):
        engine.requantize(kind)
        warm_up(engine)
        rates = [decode_rate(engine, b, args.tokens, 64)[1] for b in batches]
        row = (kind, engine.runner.weight_bytes / 2**20, perplexity(engine, text_ids), rates)
        rows.append(row)
        print(row, flush=True)
    header = " | ".join(f"decode tok/s @ batch {b}" for b in batches)
    lines = [
        "# Run-time quantization (`python -m bench.quant_bench`)",
        "",
        f"Default chat model, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Perplexity on `{TEXT}` ({len(text_ids)} tokens); "
        f"decode: engine only, greedy, {args.tokens} tokens per sequence.",
        "",
        f"| type | weights MiB | perplexity | {header} |",
        "|---|---:|---:|" + "---:|" * len(batches),
    ]
    for kind, mib, ppl, rates in rows:
        lines.append(f"| {kind} | {mib:.0f} | {ppl:.2f} | "
                     + " | ".join(f"{r:.1f}" for r in rates) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
