"""Serving benchmark CLI for OpenAI-compatible servers.

Run from the repository root, e.g.::

    python -m bench.serve_bench --levels 1,4,16 --max-tokens 128
    python -m bench.serve_bench --anchor-cmd "vllm serve MODEL --port {port}"
    python -m bench.serve_bench --base-url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.loadgen import LevelResult, run_level
from bench.rss import RssSampler

DEFAULT_SERVER_CMD = ".venv/bin/infermcp serve --port {port}"
READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 10.0


@dataclass
class RunResult:
    """All measurements of one labelled server run."""

    label: str
    command: str
    model: str
    max_tokens: int
    ready_s: float | None = None
    peak_rss_mb: float | None = None
    levels: list[LevelResult] = field(default_factory=list)


@dataclass
class ServerHandle:
    """A started server subprocess plus its log file."""

    proc: subprocess.Popen[bytes]
    command: str
    log_path: Path


# --------------------------------------------------------------------------- CLI


def parse_levels(text: str) -> list[int]:
    """Parse a comma separated list of positive concurrency levels."""
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"invalid levels: {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the benchmark CLI."""
    p = argparse.ArgumentParser(
        prog="python -m bench.serve_bench",
        description="Benchmark an OpenAI-compatible streaming chat completion server.",
    )
    p.add_argument("--server-cmd", default=DEFAULT_SERVER_CMD,
                   help="shell command starting the server; '{port}' is substituted "
                        "(default: %(default)s)")
    p.add_argument("--port", type=int, default=None,
                   help="port for started servers (default: a free port)")
    p.add_argument("--base-url", default=None,
                   help="benchmark an already running server instead of starting one")
    p.add_argument("--model", default=None,
                   help="model id to request (default: data[0].id of GET /v1/models)")
    p.add_argument("--levels", type=parse_levels, default=[1, 4, 16],
                   help="comma separated concurrency levels (default: 1,4,16)")
    p.add_argument("--max-tokens", type=int, default=128,
                   help="output tokens per request (default: %(default)s)")
    p.add_argument("--requests-per-level", type=int, default=None,
                   help="requests per level (default: max(4, 2*concurrency))")
    p.add_argument("--label", default="ours", help="label of the run (default: %(default)s)")
    p.add_argument("--anchor-cmd", default=None,
                   help="optional second server command, run beside the first and "
                        "benchmarked alternately with it, level by level")
    p.add_argument("--anchor-label", default="anchor",
                   help="label of the anchor run (default: %(default)s)")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                   help="seconds to wait for GET /health (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench/results.md"),
                   help="Markdown output file (default: %(default)s)")
    return p


# ------------------------------------------------------------------ server control


def free_port() -> int:
    """Return a currently free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(command: str, port: int) -> ServerHandle:
    """Start `command` (with {port} substituted) in its own process group."""
    cmd = command.replace("{port}", str(port))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    fd, log_name = tempfile.mkstemp(prefix="serve_bench_", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            cmd, shell=True, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return ServerHandle(proc=proc, command=cmd, log_path=Path(log_name))


def log_tail(handle: ServerHandle, lines: int = 30) -> str:
    """Return the last lines of the server log."""
    try:
        text = handle.log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(base_url: str, handle: ServerHandle | None, timeout: float) -> float:
    """Poll GET /health (or /v1/models) until it returns 200; return the elapsed seconds."""
    start = time.perf_counter()
    deadline = start + timeout
    with httpx.Client(timeout=5.0) as client:
        while time.perf_counter() < deadline:
            if handle is not None and handle.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with code {handle.proc.returncode} before becoming "
                    f"ready; log tail:\n{log_tail(handle)}"
                )
            try:
                status = client.get(f"{base_url}/health").status_code
                if status == 404:  # a server without /health (llama-cpp-python)
                    status = client.get(f"{base_url}/v1/models").status_code
                if status == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"{base_url}/health not ready after {timeout:.0f}s")


def stop_server(handle: ServerHandle) -> None:
    """SIGTERM the server's process group, then SIGKILL it after a grace period."""
    pgid = handle.proc.pid  # start_new_session makes the child a group leader
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            handle.proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Reap stragglers of the group that outlived the shell leader.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def fetch_model_id(base_url: str) -> str:
    """Return data[0].id from GET /v1/models."""
    r = httpx.get(f"{base_url}/v1/models", timeout=30.0)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


# ------------------------------------------------------------------- benchmarking


def requests_for(concurrency: int, override: int | None) -> int:
    """Number of requests to send at a concurrency level."""
    return override if override is not None else max(4, 2 * concurrency)


async def bench_levels(
    base_url: str, model: str, levels: list[int], max_tokens: int, per_level: int | None
) -> list[LevelResult]:
    """Send one warm-up request, then run every concurrency level in order."""
    warm = await run_level(base_url, model, 1, 1, max_tokens)
    if warm.errors:
        print(f"warning: warm-up request failed: {warm.first_error}", file=sys.stderr)
    results = []
    for concurrency in levels:
        n = requests_for(concurrency, per_level)
        print(f"  concurrency {concurrency}: {n} requests ...", file=sys.stderr, flush=True)
        level = await run_level(base_url, model, concurrency, n, max_tokens)
        if level.errors:
            print(f"  {level.errors} errors, first: {level.first_error}", file=sys.stderr)
        results.append(level)
    return results


def bench_external(args: argparse.Namespace, label: str) -> RunResult:
    """Benchmark an already running server at args.base_url."""
    base_url = args.base_url.rstrip("/")
    ready_s = wait_ready(base_url, None, args.ready_timeout)
    model = args.model or fetch_model_id(base_url)
    run = RunResult(label=label, command=f"(external) {base_url}", model=model,
                    max_tokens=args.max_tokens)
    print(f"[{label}] external server {base_url} (health in {ready_s:.2f}s), model {model}",
          file=sys.stderr)
    run.levels = asyncio.run(bench_levels(base_url, model, args.levels, args.max_tokens,
                                          args.requests_per_level))
    return run


def bench_commands(args: argparse.Namespace, servers: list[tuple[str, str]]
                   ) -> list[RunResult]:
    """Start every (command, label) server, then run each concurrency level on each of them
    in turn (A, B, A, B, ...), so that drifts of the machine hit both alike; stop them all."""
    handles: list[ServerHandle] = []
    samplers: list[RssSampler] = []
    runs: list[RunResult] = []
    bases: list[str] = []
    try:
        for command, label in servers:
            port = free_port() if handles or not args.port else args.port
            handle = start_server(command, port)
            handles.append(handle)
            samplers.append(RssSampler(handle.proc.pid).start())
            print(f"[{label}] started: {handle.command} (pid {handle.proc.pid}, log "
                  f"{handle.log_path})", file=sys.stderr)
            base_url = f"http://127.0.0.1:{port}"
            ready_s = wait_ready(base_url, handle, args.ready_timeout)
            model = args.model or fetch_model_id(base_url)
            print(f"[{label}] ready in {ready_s:.2f}s, model {model}", file=sys.stderr)
            runs.append(RunResult(label=label, command=handle.command, model=model,
                                  max_tokens=args.max_tokens, ready_s=ready_s))
            bases.append(base_url)
        asyncio.run(_alternate(args, runs, bases))
    finally:
        peaks = [sampler.stop() for sampler in samplers]
        for run, peak in zip(runs, peaks, strict=False):
            run.peak_rss_mb = peak
        for handle in handles:
            stop_server(handle)
    return runs


async def _alternate(args: argparse.Namespace, runs: list[RunResult], bases: list[str]) -> None:
    for run, base in zip(runs, bases, strict=True):
        warm = await run_level(base, run.model, 1, 1, args.max_tokens)
        if warm.errors:
            print(f"warning: [{run.label}] warm-up failed: {warm.first_error}", file=sys.stderr)
    for concurrency in args.levels:
        n = requests_for(concurrency, args.requests_per_level)
        for run, base in zip(runs, bases, strict=True):
            print(f"  [{run.label}] concurrency {concurrency}: {n} requests ...",
                  file=sys.stderr, flush=True)
            level = await run_level(base, run.model, concurrency, n, args.max_tokens)
            if level.errors:
                print(f"  {level.errors} errors, first: {level.first_error}", file=sys.stderr)
            run.levels.append(level)


# ------------------------------------------------------------------------ output


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform info)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_summary() -> str:
    """One-line description of the benchmarking machine."""
    return f"nproc={os.cpu_count()}, CPU: {cpu_model()}, {platform.system()} {platform.release()}"


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


LEVEL_HEADER = (
    "| concurrency | requests | completed | errors | duration s | out tok/s | req/s "
    "| TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | e2e p50 ms |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def level_row(level: LevelResult) -> str:
    """Markdown table row for one concurrency level."""
    cells = [
        str(level.concurrency), str(level.num_requests), str(level.completed),
        str(level.errors), _num(level.duration), _num(level.output_tokens_per_s, ".1f"),
        _num(level.requests_per_s), _ms(level.ttft_p50), _ms(level.ttft_p95),
        _ms(level.itl_p50), _ms(level.itl_p95), _ms(level.e2e_p50),
    ]
    return "| " + " | ".join(cells) + " |"


def run_section(run: RunResult) -> str:
    """Markdown section (metadata and level table) for one run."""
    lines = [
        f"### {run.label}",
        "",
        f"- command: `{run.command}`",
        f"- model: `{run.model}`",
        f"- max tokens per request: {run.max_tokens}",
        f"- ready in: {_num(run.ready_s)} s",
        f"- peak RSS: {_num(run.peak_rss_mb, '.0f')} MB",
        "",
        LEVEL_HEADER,
        *(level_row(level) for level in run.levels),
    ]
    return "\n".join(lines)


def ratio_section(ours: RunResult, anchor: RunResult) -> str:
    """Markdown ratio table ours/anchor for levels present in both runs."""
    by_conc = {level.concurrency: level for level in anchor.levels}
    lines = [
        f"### Ratio {ours.label} / {anchor.label}",
        "",
        (
            f"ready in: {_ratio(ours.ready_s, anchor.ready_s)}, "
            f"peak RSS: {_ratio(ours.peak_rss_mb, anchor.peak_rss_mb)}"
        ),
        "",
        "| concurrency | out tok/s | req/s | TTFT p50 | TTFT p95 | ITL p50 | e2e p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in ours.levels:
        b = by_conc.get(a.concurrency)
        if b is None:
            continue
        cells = [
            str(a.concurrency),
            _ratio(a.output_tokens_per_s, b.output_tokens_per_s),
            _ratio(a.requests_per_s, b.requests_per_s),
            _ratio(a.ttft_p50, b.ttft_p50),
            _ratio(a.ttft_p95, b.ttft_p95),
            _ratio(a.itl_p50, b.itl_p50),
            _ratio(a.e2e_p50, b.e2e_p50),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Higher is better for tok/s and req/s; lower is better for latencies."]
    return "\n".join(lines)


def render_results(runs: list[RunResult]) -> str:
    """Render all runs (and a ratio table of the first two) as Markdown."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    parts = [
        "# Serving benchmark",
        "",
        f"- date: {now}",
        f"- machine: {machine_summary()}",
        f"- python: {platform.python_version()}",
    ]
    for run in runs:
        parts += ["", run_section(run)]
    if len(runs) >= 2:
        parts += ["", ratio_section(runs[0], runs[1])]
    return "\n".join(parts) + "\n"


def write_results(path: Path | str, runs: list[RunResult]) -> str:
    """Write the Markdown report of `runs` to path and return its text."""
    text = render_results(runs)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.serve_bench`."""
    args = build_parser().parse_args(argv)
    runs: list[RunResult] = []
    try:
        if args.base_url:
            runs.append(bench_external(args, args.label))
        else:
            servers = [(args.server_cmd, args.label)]
            if args.anchor_cmd:
                servers.append((args.anchor_cmd, args.anchor_label))
            runs += bench_commands(args, servers)
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not runs:
            return 1
    text = write_results(args.out, runs)
    print(text)
    print(f"results written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
