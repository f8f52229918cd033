"""Load-and-serve benchmark of one GGUF file: start-up time and memory, then decoding speed.

    python -m bench.load_bench --model PATH [--anchor-cmd "... --model {model} --port {port}"]
        [--rounds 2] [--tokens 128] [--clients 16] --out bench/results-1b.md

For ours (``--server-cmd``, default: ``infermcp serve`` on the file, no embedding model) and the
anchor when given, round after round, each phase on one server then the other:

- cold start: ours first loses its cached metadata of the file (``$INFERMCP_CACHE_DIR/gguf/
  <stem>-<fingerprint>``, the config and tokenizer built from the GGUF's metadata), then the
  server starts; the time until it is ready (ours: GET /health is 200; the anchor, which has no
  /health: GET /v1/models is 200) and the peak RSS of its process tree meanwhile;
- warm start: the same with the metadata cached; this server then stays up for
- a first request (8 tokens, its end-to-end seconds: what lazy initialisation costs),
- 1 client: ``--single-streams`` streamed chat completions of ``--tokens`` tokens, one after
  another (``ignore_eos`` for ours, ``min_tokens`` for llama-cpp-python, both sent); the median
  of their decode rates, (tokens - 1) / (end - first token), and of their times to first token
  (one stream swung by up to 1.6x between rounds with this machine's memory speed);
- ``--clients`` clients at once, one request each: output tokens / wall time, TTFT p95;
- the peak RSS while serving those.

Every prompt is unique (a nonce opens the user message), so no server answers from a cache of a
previous prompt beyond the shared system prompt. The file is read through before each cold
start, so every server finds it in the page cache: "cold" is about the metadata, not the disk.

One client's decoding reads every weight once a token: its speed is bounded by the memory's,
which on this machine moves by up to 2x from minute to minute. So the memory's read rate is
measured right before and right after each server's 1-client streams (torch summing 1 GiB in
huge pages on all its threads, best of three, the server idle), and the report gives each
server's read rate (file bytes a token times tokens a second) as a share of it, and the most
tokens a second that rate allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import re
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from bench.loadgen import PROMPTS, REQUEST_TIMEOUT, RequestResult, send_request, summarize
from bench.rss import RssSampler
from bench.serve_bench import (
    ServerHandle,
    fetch_model_id,
    free_port,
    log_tail,
    machine_summary,
    start_server,
    stop_server,
)
from core.models.gguf_header import read_header
from core.models.loader import cache_dir

if TYPE_CHECKING:
    import torch

DEFAULT_SERVER_CMD = ".venv/bin/infermcp serve --port {port} -m {model} --embedding-model none"
READY_TIMEOUT_S = 900.0
FIRST_REQUEST_TOKENS = 8
# a stream whose tokens after the first came in less than this share of its time was held back
# and sent at once (llama-cpp-python once sent 128 tokens within 50 ms after 4.4 s): its times
# tell no decode rate. (Their gaps do not tell it: llama-cpp-python sends chunks in pairs.)
BURST_SHARE = 0.1


@dataclass
class Server:
    """A server under test: its label, command template and readiness path."""

    label: str
    command: str  # {port} and {model} are substituted
    ready_path: str
    clears_metadata: bool  # ours: delete the file's cached metadata before a cold start


@dataclass
class Sample:
    """One round's measurements of one server (None: not measured, the phase failed)."""

    cold_s: float | None = None
    cold_rss_mb: float | None = None
    warm_s: float | None = None
    warm_rss_mb: float | None = None
    first_s: float | None = None
    single_tok_s: float | None = None
    single_ttft_ms: float | None = None
    single_memory_gbs: float | None = None  # the memory's read rate around the 1-client streams
    multi_tok_s: float | None = None
    multi_ttft_p95_ms: float | None = None
    serving_rss_mb: float | None = None
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ server control


def clear_metadata(model: Path) -> int:
    """Delete ours' cached config and tokenizer of ``model``; return how many were found."""
    pattern = re.compile(re.escape(model.stem) + r"-[0-9a-f]{12}(\.tmp\d+)?")
    found = [d for d in (cache_dir() / "gguf").glob(f"{model.stem}-*") if pattern.fullmatch(d.name)]
    for d in found:
        shutil.rmtree(d, ignore_errors=True)
    return len(found)


def wait_ready(base_url: str, path: str, handle: ServerHandle, timeout: float) -> float:
    """Poll GET ``path`` every 50 ms until it answers 200; return the seconds since now."""
    start = time.perf_counter()
    with httpx.Client(timeout=5.0) as client:
        while time.perf_counter() - start < timeout:
            if handle.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {handle.proc.returncode} before "
                                   f"it was ready; log tail:\n{log_tail(handle)}")
            try:
                if client.get(base_url + path).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{base_url}{path} not ready after {timeout:.0f}s")


def start(server: Server, model: Path, timeout: float) -> tuple[ServerHandle, str, float, float]:
    """Start ``server`` on ``model``; (handle, base url, seconds to ready, peak RSS MiB while
    loading). The caller stops the handle."""
    port = free_port()
    handle = start_server(server.command.replace("{model}", str(model)), port)
    sampler = RssSampler(handle.proc.pid, interval=0.05).start()
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}", server.ready_path, handle, timeout)
    except BaseException:
        sampler.stop()
        stop_server(handle)
        raise
    return handle, f"http://127.0.0.1:{port}", ready_s, sampler.stop()


# ------------------------------------------------------------------- measuring


def unique_prompt(tag: str, i: int) -> str:
    """A prompt no other request of the run shares (but for the system prompt)."""
    return f"[{tag}-{i}-{uuid.uuid4().hex[:8]}] {PROMPTS[i % len(PROMPTS)]}"


async def _requests(base_url: str, model: str, prompts: list[str], tokens: int
                    ) -> tuple[list[RequestResult], float]:
    """Send every prompt at once; (results, wall seconds)."""
    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as client:
        begin = time.perf_counter()
        results = await asyncio.gather(*(send_request(client, base_url, model, p, tokens)
                                         for p in prompts))
        return list(results), time.perf_counter() - begin


def serve_phase(base_url: str, pid: int, tag: str, args: argparse.Namespace,
                sample: Sample) -> None:
    """The first request, 1 client, then ``args.clients`` clients; RSS sampled throughout."""
    model = fetch_model_id(base_url)
    with RssSampler(pid, interval=0.1) as sampler:
        (first,), _ = asyncio.run(_requests(base_url, model, [unique_prompt(tag, 0)],
                                            FIRST_REQUEST_TOKENS))
        if _ok(first, sample):
            sample.first_s = first.e2e
        rates, ttfts = [], []
        before = memory_rate()
        for stream in range(args.single_streams):
            (single,), _ = asyncio.run(_requests(base_url, model,
                                                 [unique_prompt(tag, 1 + stream)], args.tokens))
            if not (_ok(single, sample) and single.ttft is not None
                    and single.e2e > single.ttft):
                continue
            ttfts.append(single.ttft * 1000)
            decoding = single.e2e - single.ttft
            if decoding >= BURST_SHARE * single.e2e:
                rates.append((single.output_tokens - 1) / decoding)
            else:  # held back and sent at once: no decode rate to read from its times
                print(f"{tag}: 1 client: {single.output_tokens} tokens came within "
                      f"{decoding * 1e3:.0f} ms after {single.ttft:.1f} s; no decode rate",
                      file=sys.stderr)
        sample.single_memory_gbs = (before + memory_rate()) / 2
        if ttfts:
            sample.single_ttft_ms = statistics.median(ttfts)
        if rates:
            sample.single_tok_s = statistics.median(rates)
        prompts = [unique_prompt(tag, 1 + args.single_streams + i) for i in range(args.clients)]
        results, wall = asyncio.run(_requests(base_url, model, prompts, args.tokens))
        level = summarize(args.clients, args.clients, results, wall)
        sample.errors += [r.error for r in results if r.error]
        if level.completed:
            sample.multi_tok_s = level.output_tokens_per_s
            sample.multi_ttft_p95_ms = level.ttft_p95 * 1000
    sample.serving_rss_mb = sampler.peak_mb


def _ok(result: RequestResult, sample: Sample) -> bool:
    if result.error:
        sample.errors.append(result.error)
    return result.error is None


def cold_phase(server: Server, model: Path, args: argparse.Namespace, sample: Sample) -> None:
    """Start without ours' cached metadata, until ready; then stop. The file is read through
    first, so every server starts from it in the page cache: this machine's kernel evicts idle
    pages within minutes, and whichever server started first would have read it from disk."""
    if server.clears_metadata:
        clear_metadata(model)
    read_through(model)
    handle, _, sample.cold_s, sample.cold_rss_mb = start(server, model, args.ready_timeout)
    stop_server(handle)
    handle.log_path.unlink(missing_ok=True)


def read_through(path: Path) -> None:
    with path.open("rb", buffering=0) as f:
        while f.read(16 << 20):
            pass


def warm_phase(server: Server, model: Path, args: argparse.Namespace, tag: str,
               sample: Sample) -> None:
    """Start with the metadata cached, until ready; serve; stop."""
    handle, base_url, sample.warm_s, sample.warm_rss_mb = start(server, model, args.ready_timeout)
    try:
        serve_phase(base_url, handle.proc.pid, tag, args, sample)
    finally:
        stop_server(handle)
    handle.log_path.unlink(missing_ok=True)


def run_rounds(servers: list[Server], model: Path, args: argparse.Namespace
               ) -> dict[str, list[Sample]]:
    """Every round: the cold starts of all servers, then the warm start and serving of each."""
    samples: dict[str, list[Sample]] = {s.label: [] for s in servers}
    for r in range(1, args.rounds + 1):
        current = {s.label: Sample() for s in servers}
        for phase in ("cold", "warm"):
            for server in servers:
                _log(f"round {r}/{args.rounds}: {server.label} {phase} start ...")
                sample = current[server.label]
                try:
                    if phase == "cold":
                        cold_phase(server, model, args, sample)
                    else:
                        warm_phase(server, model, args, f"r{r}-{server.label}", sample)
                except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                    sample.errors.append(f"{phase}: {exc}")
                _log(f"  {_brief(sample)}")
        for label, sample in current.items():
            samples[label].append(sample)
    return samples


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _brief(sample: Sample) -> str:
    return ", ".join(f"{f.name}={_fmt(getattr(sample, f.name))}" for f in fields(Sample)
                     if f.name != "errors" and getattr(sample, f.name) is not None) + (
        f"; {len(sample.errors)} errors, first: {sample.errors[0][:300]}" if sample.errors
        else "")


# ------------------------------------------------------------------------ report


def file_summary(model: Path) -> str:
    """The GGUF's architecture, shape, tensor types and size, from its header."""
    header = read_header(model, np.memmap(model, dtype=np.uint8, mode="r").data)
    meta, arch = header.metadata, header.metadata.get("general.architecture", "?")
    types: dict[str, int] = {}
    for info in header.tensors.values():
        types[info.type_name] = types.get(info.type_name, 0) + 1
    embd = header.tensors.get("token_embd.weight")
    dims = {key: meta.get(f"{arch}.{key}", "?") for key in (
        "block_count", "embedding_length", "feed_forward_length", "attention.head_count",
        "attention.head_count_kv", "context_length")}
    return (f"`{model}` ({model.stat().st_size / 2**20:.1f} MiB): {arch}, "
            f"{dims['block_count']} layers, hidden {dims['embedding_length']}, ffn "
            f"{dims['feed_forward_length']}, heads {dims['attention.head_count']}/"
            f"{dims['attention.head_count_kv']}, vocab {embd.shape[-1] if embd else '?'}, "
            f"context {dims['context_length']}; tensors "
            + ", ".join(f"{n} {t}" for t, n in sorted(types.items(), key=lambda kv: -kv[1])))


COLUMNS = (
    ("cold_s", "cold start s", ".2f"), ("cold_rss_mb", "cold peak RSS MiB", ".0f"),
    ("warm_s", "warm start s", ".2f"), ("warm_rss_mb", "warm peak RSS MiB", ".0f"),
    ("first_s", "first request s", ".2f"), ("single_tok_s", "1 client tok/s", ".1f"),
    ("single_ttft_ms", "1 client TTFT ms", ".0f"), ("multi_tok_s", "{n} clients tok/s", ".1f"),
    ("multi_ttft_p95_ms", "{n} clients TTFT p95 ms", ".0f"),
    ("serving_rss_mb", "serving peak RSS MiB", ".0f"),
)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _median(samples: list[Sample], name: str) -> float | None:
    values = [v for s in samples if (v := getattr(s, name)) is not None]
    return statistics.median(values) if values else None


def results_table(samples: dict[str, list[Sample]], clients: int) -> list[str]:
    """One row per round and server, then each server's medians when there are two rounds
    or more."""
    heads = [title.format(n=clients) for _, title, _ in COLUMNS]
    lines = ["| round | server | " + " | ".join(heads) + " | errors |",
             "|---|---|" + "---:|" * (len(COLUMNS) + 1)]
    for r in range(max(len(v) for v in samples.values())):
        for label, runs in samples.items():
            cells = [_fmt(getattr(runs[r], name), spec) for name, _, spec in COLUMNS]
            lines.append(f"| {r + 1} | {label} | " + " | ".join(cells)
                         + f" | {len(runs[r].errors)} |")
    for label, runs in samples.items():
        if len(runs) > 1:
            cells = [_fmt(_median(runs, name), spec) for name, _, spec in COLUMNS]
            lines.append(f"| median | {label} | " + " | ".join(cells)
                         + f" | {sum(len(s.errors) for s in runs)} |")
    return lines


@cache
def _probe_data() -> torch.Tensor:
    """1 GiB of float32 in huge pages, as the server holds its weights (``core.models.pages``),
    faulted in once: what :func:`memory_rate` reads."""
    import torch

    from core.models import pages

    return pages.empty((1 << 28,), torch.float32).fill_(1)


def memory_rate(passes: int = 3) -> float:
    """GB/s at which torch sums :func:`_probe_data` on all its threads, best of ``passes``:
    about the rate at which this machine's memory can be read now."""
    data = _probe_data()
    best = float("inf")
    for _ in range(passes):
        begin = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - begin)
    return data.numel() * 4 / best / 1e9


def memory_lines(size_gb: float, samples: dict[str, list[Sample]]) -> list[str]:
    """Each round's 1-client streams against the memory's read rate around them: the share of
    it each server read, and the tokens a second it allowed (a file's bytes a token)."""
    head = ["", "One client's decoding reads the file once a token "
            f"({size_gb:.2f} GB). The memory's read rate around each server's 1-client "
            "streams (torch's sum of 1 GiB in huge pages, right before and after them, the "
            "server idle), the share of it the server read, and the most tokens a second it "
            "allowed:", "", "| round | server | 1 client tok/s | memory GB/s | read GB/s | "
            "share | at most tok/s |", "|---|---|---:|---:|---:|---:|---:|"]
    lines: list[str] = []
    for r in range(max(len(v) for v in samples.values())):
        for label, runs in samples.items():
            speed, memory = runs[r].single_tok_s, runs[r].single_memory_gbs
            if speed and memory:
                lines.append(f"| {r + 1} | {label} | {speed:.1f} | {memory:.1f} | "
                             f"{speed * size_gb:.1f} | {100 * speed * size_gb / memory:.0f}% | "
                             f"{memory / size_gb:.1f} |")
    return head + lines if lines else []


def render(model: Path, servers: list[Server], samples: dict[str, list[Sample]],
           args: argparse.Namespace) -> str:
    """The Markdown report."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = ["# GGUF load and serving benchmark", "",
             f"- date: {now}", f"- machine: {machine_summary()}",
             f"- python: {platform.python_version()}", f"- file: {file_summary(model)}",
             f"- rounds: {args.rounds}; {args.tokens} tokens a request; {args.clients} clients",
             *(f"- {s.label}: `{s.command.replace('{model}', str(model))}` (ready: GET "
               f"{s.ready_path} 200)" for s in servers),
             "", *results_table(samples, args.clients), "",
             "Cold start: ours without its cached config/tokenizer of the file (rebuilt from "
             "its metadata); warm: with it. Before each cold start the file is read through, "
             "so each server finds it in the page cache. Start times run from the launch to "
             "the ready "
             "answer; RSS is the server's process tree's, sampled every 50 ms while loading and "
             "every 100 ms while serving. 1 client tok/s is the decode rate after the first "
             f"token, the median of {args.single_streams} streams one after another (n/a "
             "where the server held the tokens back and sent them at once, in "
             f"under {BURST_SHARE:.0%} of the request's time); {args.clients} clients tok/s is "
             "all output tokens over the wall time of the burst. The first request (8 tokens) "
             "follows the warm start."]
    lines += memory_lines(model.stat().st_size / 1e9, samples)
    errors = [f"- round {r + 1} {label}: {e[:300]}" for label, runs in samples.items()
              for r, s in enumerate(runs) for e in s.errors[:3]]
    if errors:
        lines += ["", "Errors (first three a round):", "", *errors]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the benchmark CLI."""
    p = argparse.ArgumentParser(prog="python -m bench.load_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the GGUF file")
    p.add_argument("--server-cmd", default=DEFAULT_SERVER_CMD,
                   help="ours; {port} and {model} are substituted (default: %(default)s)")
    p.add_argument("--label", default="ours")
    p.add_argument("--anchor-cmd", default=None,
                   help="the anchor server's command, with {port} and {model}")
    p.add_argument("--anchor-label", default="llama-cpp-python")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128, help="output tokens a request")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--single-streams", type=int, default=3,
                   help="1-client streams a round, one after another (their median counts)")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S)
    p.add_argument("--out", type=Path, default=Path("bench/results-1b.md"))
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.load_bench``."""
    args = build_parser().parse_args(argv)
    model = args.model.resolve()
    if not model.is_file():
        print(f"error: no file {model}", file=sys.stderr)
        return 1
    servers = [Server(args.label, args.server_cmd, "/health", clears_metadata=True)]
    if args.anchor_cmd:
        servers.append(Server(args.anchor_label, args.anchor_cmd, "/v1/models", False))
    samples = run_rounds(servers, model, args)
    text = render(model, servers, samples, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    _log(f"results written to {args.out}")
    failed = any(s.errors for runs in samples.values() for s in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
