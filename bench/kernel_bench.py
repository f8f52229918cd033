"""The integer matmul kernels alone: GB/s of weights read, by kernel, at a number of activation
rows, on the matmul shapes of the Llama-3.2-1B-shaped files (Q4_K_M's Q4_K and Q6_K, Q4_0's
4-bit blocks, Q8_0's 8-bit ones), with random codes in huge pages as the server holds its weights.

Run from the repo root: ``python -m bench.kernel_bench [--rows 1,16] [--cache] [--rounds 6]``.
Without ``--cache`` every matmul of a decode step is read once a round, as the memory sees a
step, each kernel's step beside a sum of as many bytes in huge pages (what the memory gives).
With it, one 4096x2048 matrix a kernel is read over and over and stays in the L3 cache: what
the kernels compute a second, the memory aside. Kernels alternate round by round; the medians
are printed. For an A/B, run it from a ``git worktree`` of the commit before
(``PYTHONPATH=<worktree>``) and from this one, alternating: this machine's memory speed moves
by up to 2x from minute to minute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.gguf_synth import SHAPES
from core.models import kernels, pages

SHAPE = SHAPES["llama-3.2-1b"]
HIDDEN, FFN, LAYERS = SHAPE.hidden, SHAPE.ffn, SHAPE.layers
KV = SHAPE.kv_heads * SHAPE.head_dim  # the key (and the value) projection's rows
VOCAB = 49152  # the bundled tokenizer's, which bench.gguf_synth's files carry
CACHED = (4096, 2048)  # (out, in) of the matrix read over and over with --cache


@dataclass
class Matmul:
    """One weight's tensors in a kernel's layout, and the call that multiplies by it."""

    kernel: str
    out_features: int
    in_features: int
    tensors: tuple[torch.Tensor, ...]

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        op: Callable[..., torch.Tensor] = getattr(torch.ops.infermcp, f"{self.kernel}_matmul")
        return op(x, *self.tensors, self.out_features)


def _random(shape: tuple[int, ...], dtype: torch.dtype, high: int = 0) -> torch.Tensor:
    out = pages.empty(shape, dtype)
    if dtype == torch.float16:
        out.copy_(torch.rand(shape) * 0.01)  # scales of a plausible size: no infinities
    else:
        out.copy_(torch.randint(-high if dtype == torch.int8 else 0, high, shape, dtype=dtype))
    return out


def matmul(kernel: str, out_features: int, in_features: int) -> Matmul:
    """Random weights of the shape in the tiled layout ``kernel`` reads (see its source)."""
    tiles, blocks = out_features // 8, in_features // 32
    tensors = {
        "q4": lambda: (_random((tiles, blocks, 128), torch.uint8, 256),
                       _random((tiles, blocks, 8), torch.float16),
                       torch.empty(0, dtype=torch.float16)),
        "q4k": lambda: (_random((tiles, blocks, 128), torch.uint8, 256),
                        _random((tiles, blocks, 2, 8), torch.uint8, 64),
                        _random((tiles, blocks // 8, 2, 8), torch.float16)),
        "q8": lambda: (_random((tiles, blocks, 256), torch.int8, 128),
                       _random((tiles, blocks, 8), torch.float16),
                       torch.empty(0, dtype=torch.float16)),
        "q6": lambda: (_random((tiles, blocks, 192), torch.uint8, 256),
                       _random((tiles, 2 * blocks, 8), torch.int8, 64),
                       _random((tiles, blocks // 8, 8), torch.float16)),
    }[kernel]()
    return Matmul(kernel, out_features, in_features, tensors)


def step_shapes(kernel: str) -> list[tuple[int, int]]:
    """The (out, in) shapes of a decode step's matmuls: Q4_0's ("q4") or Q8_0's ("q8"), all of
    one type, or Q4_K_M's Q4_K ones ("q4k") or Q6_K ones ("q6"). Q4_K_M gives half the layers
    (llama.cpp's choice differs only in which) more bits: their value and down projections in
    Q6_K, as the tied head."""
    if kernel in ("q4", "q8"):
        layer = [(HIDDEN + 2 * KV, HIDDEN), (HIDDEN, HIDDEN), (2 * FFN, HIDDEN), (HIDDEN, FFN)]
        return [shape for _ in range(LAYERS) for shape in layer] + [(VOCAB, HIDDEN)]
    shapes: list[tuple[int, int]] = []
    for index in range(LAYERS):
        more_bits = index % 2 == 1
        if kernel == "q6" and more_bits:
            shapes += [(KV, HIDDEN), (HIDDEN, FFN)]
        elif kernel == "q4k":  # query and key (and value), output, gate and up (and down)
            shapes += [(HIDDEN + KV * (1 if more_bits else 2), HIDDEN), (HIDDEN, HIDDEN),
                       (2 * FFN, HIDDEN)] + ([] if more_bits else [(HIDDEN, FFN)])
    return shapes + ([(VOCAB, HIDDEN)] if kernel == "q6" else [])


def sum_rate(data: torch.Tensor) -> float:
    """GB/s of torch's sum over ``data`` (float32 in huge pages)."""
    begin = time.perf_counter()
    data.sum()
    return data.numel() * 4 / (time.perf_counter() - begin) / 1e9


def measure(rows: int, cache: bool, rounds: int) -> list[str]:
    """Markdown lines: each kernel's median GB/s at ``rows`` rows."""
    kinds = ("q4", "q4k", "q6", "q8")
    work = {kind: [matmul(kind, *CACHED)] * 20 if cache
            else [matmul(kind, *shape) for shape in step_shapes(kind)]
            for kind in kinds}
    inputs = {n: torch.randn(rows, n) for n in (HIDDEN, FFN)}
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    sums: list[float] = []
    biggest = max(sum(m.bytes for m in step) for step in work.values())
    # the sum's bytes (none in the cache, which they would wipe between rounds)
    data = pages.empty((0 if cache else biggest // 4,), torch.float32).fill_(1)
    for step in work.values():  # first calls: threads started, pages faulted in
        for m in step:
            m(inputs[m.in_features])
    for index in range(rounds):
        for kind in kinds if index % 2 else kinds[::-1]:
            begin = time.perf_counter()
            for m in work[kind]:
                m(inputs[m.in_features])
            seconds = time.perf_counter() - begin
            rates[kind].append(sum(m.bytes for m in work[kind]) / seconds / 1e9)
        if not cache:
            sums.append(sum_rate(data))
    shown = {"q4": "Q4_0 (q4)", "q4k": "Q4_K (q4k)", "q6": "Q6_K (q6)", "q8": "Q8_0 (q8)"}
    lines = [f"| {rows} | {shown[kind]} | {sum(m.bytes for m in work[kind]) / 1e6:.1f} | "
             f"{statistics.median(rates[kind]):.1f} | {max(rates[kind]):.1f} |" for kind in kinds]
    if not cache:
        lines.append(f"| {rows} | torch's sum, huge pages | {biggest / 1e6:.1f} | "
                     f"{statistics.median(sums):.1f} | {max(sums):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,16", help="activation rows, comma-separated")
    parser.add_argument("--cache", action="store_true",
                        help="one matrix a kernel, read over and over from the L3 cache")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    if not kernels.available():
        raise SystemExit("the kernels are not available on this machine (see core.models.kernels)")
    lines = ["# Integer matmul kernels alone (`python -m bench.kernel_bench`)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
             f"- threads: {torch.get_num_threads()}; rounds: {args.rounds}; " + (
                 "one 4096x2048 matrix a kernel, read 20 times a round (in L3)" if args.cache
                 else "a decode step of the Llama-3.2-1B-shaped files a round"), "",
             "| rows | kernel | MB a pass | median GB/s | best GB/s |", "|---:|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for rows in (int(r) for r in args.rows.split(",")):
        measured = measure(rows, args.cache, args.rounds)
        lines += measured
        print("\n".join(measured), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
