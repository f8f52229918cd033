"""The sampler alone: milliseconds to draw one token of a row, by vocabulary size and sampling
parameters, beside what the two heaviest steps of the sampler it replaced cost in the same run
(torch drawing an Exp(1) number a token, and sorting the vocabulary).

Run from the repo root: ``python -m bench.sampler_bench [--out bench/sampler.md] [--repeats 50]``.
The logits are normal, standard deviation 4 ("peaked", a spread like a model's) or 1 ("flat":
a nucleus of most of the vocabulary), seeded; each figure is the median of ``--repeats`` draws
after ten unmeasured ones. Expect the figures to move by up to 2x from run to run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.engine.params import SamplingParams
from core.engine.sampler import Sampler
from core.engine.sequence import Sequence

VOCABULARIES = (49_152, 128_256, 262_144)  # the bench files'; Llama 3's; Gemma 3's
SPREADS = {"peaked": 4.0, "flat": 1.0}
PARAMS = {
    "greedy": SamplingParams(temperature=0),
    "temperature 0.7": SamplingParams(temperature=0.7),
    "+ top_p 0.9": SamplingParams(temperature=0.7, top_p=0.9),
    "top_k 40": SamplingParams(temperature=1.0, top_k=40),
    "+ min_p 0.05": SamplingParams(temperature=0.7, top_p=0.9, min_p=0.05),
}


def median_ms(call: Callable[[], object], repeats: int) -> float:
    for _ in range(10):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def row(vocab: int, scale: float, repeats: int) -> list[float]:
    """One vocabulary and spread: each setting's milliseconds, then the old steps'."""
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(0)) * scale
    cells = []
    for params in PARAMS.values():
        sampler = Sampler((0,), seed=0)
        seqs = [Sequence(1, "bench", [1, 2, 3], params, max_tokens=1 << 20)]
        cells.append(median_ms(lambda s=sampler, q=seqs: s(logits, q), repeats))
    cells.append(median_ms(lambda: torch.empty(vocab).exponential_(), repeats))
    cells.append(median_ms(lambda: logits.sort(dim=-1, descending=True), repeats))
    return cells


def table(repeats: int, vocabularies: tuple[int, ...] = VOCABULARIES) -> list[str]:
    lines = ["| vocabulary | logits | " + " | ".join(PARAMS) + " | Exp(1) draws | sort |",
             "|---:|---|" + "---:|" * (len(PARAMS) + 2)]
    for vocab in vocabularies:
        for spread, scale in SPREADS.items():
            cells = row(vocab, scale, repeats)
            lines.append(f"| {vocab:,} | {spread} | " + " | ".join(f"{c:.2f}" for c in cells)
                         + " |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    header = [
        "# The sampler alone (`python -m bench.sampler_bench`)",
        "",
        f"Milliseconds to draw one token of one row, median of {args.repeats}; "
        f"{torch.get_num_threads()} threads. Logits normal, standard deviation 4 (peaked) or 1 "
        "(flat). The last two columns are the heaviest steps of the sampler before the "
        "Gumbel-max race and the log-probability buckets: an Exp(1) number drawn a token, and "
        "a sort of the vocabulary (for any top-k or top-p).",
        "",
    ]
    print("\n".join(header), flush=True)
    lines = header + table(args.repeats)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
