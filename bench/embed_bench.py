"""Embeddings throughput: one by one vs batched, for the encoder alone and through the server.

Run from the repository root: ``python -m bench.embed_bench [--inputs 256] [--out FILE]``.
It starts ``infermcp serve -m none`` (the default embedding model only) on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from bench.serve_bench import free_port, machine_summary, start_server, stop_server, wait_ready

TEXT = ("the quick brown fox jumps over a lazy dog while seven curious engineers measure how "
        "fast small sentence encoders turn text into vectors on two shared cpu cores")
WORDS = TEXT.split(" ")


def sentences(n: int) -> list[str]:
    """``n`` sentences of 6 to 29 words, deterministic."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6 + i % 24)) for i in range(n)]


def encoder_rates(texts: list[str], batch: int) -> tuple[float, float]:
    """(inputs/s one row per forward pass, inputs/s ``batch`` rows per pass), no server."""
    from core.embedding.encoder_runner import EncoderRunner
    from core.embedding.pooling import PoolingConfig
    from core.models import loader
    from core.models.tokenizer import Tokenizer

    model_dir = loader.default_embedding_dir()
    runner = EncoderRunner(model_dir, PoolingConfig.from_model_dir(model_dir))
    tokenizer = Tokenizer.load(model_dir)
    rows = [tokenizer.with_special_tokens(ids) for ids in tokenizer.encode_batch(texts)]
    runner.encode(rows[:4])  # warm-up
    start = time.perf_counter()
    for row in rows:
        runner.encode([row])
    single = len(rows) / (time.perf_counter() - start)
    ordered = sorted(rows, key=len)
    start = time.perf_counter()
    for i in range(0, len(ordered), batch):
        runner.encode(ordered[i:i + batch])
    return single, len(rows) / (time.perf_counter() - start)


async def timed(work: Callable[[], Awaitable[None]], n: int) -> float:
    start = time.perf_counter()
    await work()
    return n / (time.perf_counter() - start)


async def server_rates(base_url: str, texts: list[str], concurrency: int) -> dict[str, float]:
    url = f"{base_url}/v1/embeddings"
    async with httpx.AsyncClient(timeout=300) as client:
        async def post(inputs: list[str]) -> None:
            r = await client.post(url, json={"model": "default", "input": inputs})
            r.raise_for_status()

        async def one_by_one() -> None:
            for text in texts:
                await post([text])

        async def one_request() -> None:
            await post(texts)

        async def concurrent() -> None:
            queue = list(texts)

            async def worker() -> None:
                while queue:
                    await post([queue.pop()])

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await post(texts[:8])  # warm-up
        n = len(texts)
        return {
            "sequential requests, 1 input each": await timed(one_by_one, n),
            f"{concurrency} concurrent clients, 1 input each": await timed(concurrent, n),
            f"one request with {n} inputs": await timed(one_request, n),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    texts = sentences(args.inputs)
    single, batched = encoder_rates(texts, 32)
    port = free_port()
    handle = start_server(f"{sys.executable} -m infermcp serve -m none --port {{port}}", port)
    print(f"server log: {handle.log_path}", file=sys.stderr)
    try:
        wait_ready(f"http://127.0.0.1:{port}", handle, 300)
        rates = asyncio.run(server_rates(f"http://127.0.0.1:{port}", texts, args.concurrency))
    finally:
        stop_server(handle)
    lines = [f"# Embeddings throughput (all-MiniLM-L6-v2, {args.inputs} sentences of 8-31 "
             f"tokens)", "", machine_summary(), "", "| how | inputs/s |", "|---|---:|",
             f"| encoder alone, one input per forward pass | {single:.0f} |",
             f"| encoder alone, 32 inputs per forward pass | {batched:.0f} |"]
    lines += [f"| server: {name} | {rate:.0f} |" for name, rate in rates.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
