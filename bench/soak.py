"""Soak test: many concurrent clients against a real server for a bounded time.

Starts ``infermcp serve`` on loopback, warms it up, records its RSS and engine state, then runs
``--clients`` concurrent loops for ``--duration`` seconds: streaming and whole chat and text
completions (some with n=2, stop strings or JSON mode), a share that disconnects mid-stream, and
a few malformed requests. The queue is kept small so overload (429 + Retry-After) happens too.
Afterwards it checks that no sequence is running or waiting, the KV cache is wholly free, RSS
levelled off (the second half of the run added at most ``--rss-margin`` of the level before: a
leak grows all along, while memory kept for reuse, such as the allocator's freed step buffers,
reaches its level and stays there), every completed response was well-formed
and every error was OpenAI's envelope; then it stops the server with SIGTERM and checks it
exits 0. Figures go to ``--out`` (markdown); the exit status is 1 if a check failed.

    python -m bench.soak --duration 180 --out bench/soak.md
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.rss import RssSampler, tree_rss_kb
from bench.serve_bench import free_port, machine_summary
from bench.soak_checks import check_completion, check_error, check_stream

PROMPTS = ["Name three colours.", "What is 2 + 2?", "Describe a cat in one sentence.",
           "Write a haiku about rain.", "List two fruits.", "Why is the sky blue?"]
MALFORMED: list[tuple[str, bytes]] = [
    ("bad JSON", b'{"messages": ['),
    ("NaN", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
    ("deep nesting", b"[" * 5000 + b"]" * 5000),
    ("path as model", b'{"model": "../../etc/passwd", "messages": [{"role": "user", '
                      b'"content": "hi"}]}'),
    ("n too large", b'{"n": 99, "messages": [{"role": "user", "content": "hi"}]}'),
]
MAX_SEQ_LEN = 1024
KINDS = {"chat_stream": 35, "chat": 15, "completion_stream": 10, "completion": 10,
         "disconnect": 20, "malformed": 5, "chat_json": 5}


@dataclass
class Tally:
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected_429: int = 0
    disconnects: int = 0
    malformed_4xx: int = 0
    output_tokens: int = 0
    problems: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180, help="seconds of load (180)")
    parser.add_argument("--warmup", type=float, default=30,
                        help="seconds of the same load before RSS is first measured (30)")
    parser.add_argument("--clients", type=int, default=14, help="concurrent clients (14)")
    parser.add_argument("--max-seqs", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rss-margin", type=float, default=0.02,
                        help="allowed RSS growth over the second half of the run, as a "
                        "fraction of the level before (0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/soak.md")
    return parser


async def run_client(client: httpx.AsyncClient, rng: random.Random, deadline: float,
                     args: argparse.Namespace, tally: Tally) -> None:
    kinds, weights = zip(*KINDS.items(), strict=True)
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        tally.sent[kind] += 1
        try:
            retry_after = await one_request(client, rng, kind, args, tally)
        except httpx.HTTPError as exc:
            tally.transport_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            retry_after = 1.0
        if retry_after:
            await asyncio.sleep(retry_after * rng.uniform(0.5, 1.5))


async def one_request(client: httpx.AsyncClient, rng: random.Random, kind: str,
                      args: argparse.Namespace, tally: Tally) -> float:
    """Send one request of ``kind``; return seconds to wait before the next (after a 429)."""
    if kind == "malformed":
        name, raw = rng.choice(MALFORMED)
        r = await client.post("/v1/chat/completions", content=raw,
                              headers={"content-type": "application/json"})
        problems = check_error(r.status_code, parse(r.content), dict(r.headers))
        if 400 <= r.status_code < 500 and r.status_code != 429 and not problems:
            tally.malformed_4xx += 1
            tally.ok[kind] += 1
        else:
            tally.problems.append(f"malformed ({name}): HTTP {r.status_code} {problems}")
        return 0.0
    route = "completions" if kind.startswith("completion") else "chat/completions"
    body, n = request_body(rng, kind, args)
    if not body["stream"]:
        r = await client.post(f"/v1/{route}", json=body)
        if r.status_code != 200:
            return await error_answer(r.status_code, parse(r.content), dict(r.headers), kind,
                                      tally)
        result = r.json()
        problems = check_completion(result, "chat" if route.startswith("chat") else "text",
                                    n, body["max_tokens"])
        if kind == "chat_json" and not problems:
            problems += json_problems(result)
        record(tally, kind, problems, result.get("usage", {}).get("completion_tokens", 0))
        return 0.0
    async with client.stream("POST", f"/v1/{route}", json=body) as r:
        if r.status_code != 200:
            return await error_answer(r.status_code, parse(await r.aread()), dict(r.headers),
                                      kind, tally)
        events: list[str] = []
        stop_after = rng.randint(1, 6) if kind == "disconnect" else None
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            if stop_after is not None and len(events) >= stop_after:
                tally.disconnects += 1  # leaving the block closes the connection mid-stream
                tally.ok[kind] += 1
                return 0.0
    problems = check_stream(events, "chat" if route.startswith("chat") else "text", n,
                            body["max_tokens"])
    usage = json.loads(events[-2]).get("usage") if len(events) > 1 and not problems else None
    record(tally, kind, problems, (usage or {}).get("completion_tokens", 0))
    return 0.0


def parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:200]


def request_body(rng: random.Random, kind: str, args: argparse.Namespace
                 ) -> tuple[dict[str, Any], int]:
    prompt = rng.choice(PROMPTS)
    n = 2 if rng.random() < 0.15 and kind != "disconnect" else 1
    body: dict[str, Any] = {"max_tokens": args.max_tokens, "n": n,
                            "temperature": rng.choice([0, 0.7, 1.0]),
                            "stream": kind.endswith("stream") or kind == "disconnect",
                            "stream_options": {"include_usage": True}}
    if kind == "disconnect":
        body.update(max_tokens=200, ignore_eos=True)
    if kind.startswith("completion"):
        body["prompt"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": prompt}]
    if rng.random() < 0.2 and kind != "chat_json":  # a stop would cut the JSON short
        body["stop"] = [rng.choice([".", "\n", " the"])]
    if kind == "chat_json":
        body.update(response_format={"type": "json_object"}, max_tokens=48, n=1)
        n = 1
    if not body["stream"]:
        body.pop("stream_options")
    return body, n


async def error_answer(status: int, body: Any, headers: dict[str, str], kind: str,
                       tally: Tally) -> float:
    problems = check_error(status, body, headers)
    if status == 429 and not problems:
        tally.rejected_429 += 1
        return float(headers["retry-after"])
    tally.problems.append(f"{kind}: HTTP {status} {problems or body}")
    return 0.0


def json_problems(result: dict[str, Any]) -> list[str]:
    choice = result["choices"][0]
    if choice["finish_reason"] != "stop":
        return []  # cut off by max_tokens: not a whole object, as asked
    try:
        json.loads(choice["message"]["content"])
    except json.JSONDecodeError:
        return [f"json_object output is not JSON: {choice['message']['content'][:100]}"]
    return []


def record(tally: Tally, kind: str, problems: list[str], tokens: int) -> None:
    if problems:
        tally.problems.append(f"{kind}: {problems}")
    else:
        tally.ok[kind] += 1
        tally.output_tokens += tokens


def engine_state(base_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base_url}/health", timeout=30).json()["engine"])


def wait_idle(base_url: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = engine_state(base_url)
        if state["running"] == state["waiting"] == 0 or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def fill_kv_cache(base_url: str, args: argparse.Namespace) -> None:
    """Make every KV-cache page resident before RSS is first measured.

    The cache is allocated up front but the OS maps its pages only when first written, so
    without this RSS grows during the run as new blocks are used, which says nothing about
    leaks. ``max_seqs`` prompts that fill the context at once touch every block.
    """
    async def fill() -> None:
        body = {"prompt": [1000] * (MAX_SEQ_LEN - 1), "max_tokens": 1}
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
            answers = await asyncio.gather(*(client.post("/v1/completions", json=body)
                                             for _ in range(args.max_seqs)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]

    asyncio.run(fill())


def settled_rss_mb(pid: int) -> float:
    """RSS after the allocator has had a moment to return freed memory."""
    time.sleep(3)
    return tree_rss_kb(pid) / 1024


async def load(base_url: str, args: argparse.Namespace, duration: float, tally: Tally,
               pid: int, rss_trace: list[float]) -> None:
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=8)
    timeout = httpx.Timeout(300, connect=30)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        deadline = time.monotonic() + duration
        rngs = [random.Random(args.seed * 1000 + i + len(rss_trace)) for i in
                range(args.clients)]
        tracer = asyncio.ensure_future(trace_rss(pid, rss_trace))
        await asyncio.gather(*(run_client(client, rng, deadline, args, tally) for rng in rngs))
        tracer.cancel()


async def trace_rss(pid: int, trace: list[float], every: float = 30) -> None:
    """RSS every ``every`` seconds under load: a leak shows as steady growth."""
    while True:
        await asyncio.sleep(every)
        trace.append(tree_rss_kb(pid) / 1024)


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "infermcp", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--embedding-model", "none", "--max-seqs", str(args.max_seqs),
               "--max-queue", str(args.max_queue), "--max-seq-len", str(MAX_SEQ_LEN), "--seed", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    proc = start_server(args, port, log)
    figures: dict[str, Any] = {}
    tally = Tally()
    try:
        wait_ready(base_url, proc, log)
        fill_kv_cache(base_url, args)
        warm_trace: list[float] = []
        asyncio.run(load(base_url, args, args.warmup, Tally(), proc.pid, warm_trace))
        figures["before"] = wait_idle(base_url)
        figures["rss_before"] = settled_rss_mb(proc.pid)
        trace: list[float] = []
        figures["rss_trace"] = trace
        started = time.monotonic()
        with RssSampler(proc.pid, interval=0.5) as sampler:
            asyncio.run(load(base_url, args, args.duration, tally, proc.pid, trace))
            figures["load_s"] = time.monotonic() - started
            figures["after"] = wait_idle(base_url)
        figures["rss_peak"] = sampler.peak_mb
        figures["rss_after"] = settled_rss_mb(proc.pid)
    finally:
        stop_started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            figures["exit_code"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            figures["exit_code"] = f"killed ({proc.wait()})"
        figures["exit_s"] = time.monotonic() - stop_started
    checks = evaluate(figures, tally, args)
    report = render(figures, tally, checks, args)
    Path(args.out).write_text(report)
    print(report)
    return 0 if all(ok for _, ok in checks) else 1


def evaluate(figures: dict[str, Any], tally: Tally, args: argparse.Namespace
             ) -> list[tuple[str, bool]]:
    after = figures["after"]
    return [
        ("no sequence running or waiting afterwards", after["running"] == after["waiting"] == 0),
        ("KV cache wholly free afterwards", after["free_blocks"] == after["total_blocks"]),
        (f"RSS levelled off: the second half of the run added at most {args.rss_margin:.0%}",
         late_rss_growth(figures) <= figures["rss_before"] * args.rss_margin),
        ("every completed response well-formed, every error an envelope", not tally.problems),
        ("no connection failed", not tally.transport_errors),
        ("engine alive, no request failed", after["error"] is None and after["failed"] == 0),
        ("server exited 0 on SIGTERM", figures["exit_code"] == 0),
    ]


def late_rss_growth(figures: dict[str, Any]) -> float:
    """MB that RSS grew from the sample in the middle of the run to the end (from the level
    before, for a run too short to have samples)."""
    trace = figures["rss_trace"]
    middle = trace[(len(trace) - 1) // 2] if len(trace) >= 2 else figures["rss_before"]
    return float(figures["rss_after"] - middle)


def render(figures: dict[str, Any], tally: Tally, checks: list[tuple[str, bool]],
           args: argparse.Namespace) -> str:
    before, after = figures["before"], figures["after"]
    completed = sum(v for k, v in tally.ok.items() if k not in ("malformed", "disconnect"))
    lines = [
        "# Soak test", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- machine: {machine_summary()}",
        f"- command: `python -m bench.soak --duration {args.duration:g} --warmup "
        f"{args.warmup:g} --clients {args.clients} --max-seqs {args.max_seqs} --max-queue "
        f"{args.max_queue}`",
        f"- server: SmolLM2-135M-Instruct, `--max-seqs {args.max_seqs} --max-queue "
        f"{args.max_queue} --max-seq-len 1024`, loopback",
        "- before RSS is first measured, prompts filling the whole KV cache make it resident "
        "(it is allocated up front, but its pages count only once written), then a warm-up "
        "of the same load runs", "",
        "| figure | value |", "|---|---:|",
        f"| load duration | {figures['load_s']:.0f} s |",
        f"| requests sent | {sum(tally.sent.values())} |",
        f"| completed and well-formed | {completed} |",
        f"| disconnects mid-stream (survived) | {tally.disconnects} |",
        f"| refused with 429 + Retry-After (then retried) | {tally.rejected_429} |",
        f"| malformed requests answered 4xx | {tally.malformed_4xx} |",
        f"| malformed responses / bad errors | {len(tally.problems)} |",
        f"| connection failures | {len(tally.transport_errors)} |",
        f"| tokens generated (completed requests) | {tally.output_tokens} |",
        f"| throughput | {tally.output_tokens / figures['load_s']:.1f} tok/s |",
        f"| RSS before / peak / after | {figures['rss_before']:.0f} / {figures['rss_peak']:.0f}"
        f" / {figures['rss_after']:.0f} MB |",
        f"| RSS under load, every 30 s | "
        f"{', '.join(f'{x:.0f}' for x in figures['rss_trace']) or '-'} MB |",
        f"| engine aborted (disconnects seen by the engine) | "
        f"{after['aborted'] - before['aborted']} |",
        f"| engine finished | {after['finished'] - before['finished']} |",
        f"| engine preemptions | {after['preemptions'] - before['preemptions']} |",
        f"| after: running / waiting / free of total KV blocks | {after['running']} / "
        f"{after['waiting']} / {after['free_blocks']} of {after['total_blocks']} |",
        f"| SIGTERM to exit | {figures['exit_s']:.1f} s, exit code {figures['exit_code']} |",
        "", "Requests by kind (sent / ok): " + ", ".join(
            f"{k} {tally.sent[k]}/{tally.ok[k]}" for k in KINDS), "", "## Checks", "",
        *[f"- [{'x' if ok else ' '}] {name}" for name, ok in checks], ""]
    for title, items in (("Problems", tally.problems), ("Connection failures",
                                                        tally.transport_errors)):
        if items:
            lines += [f"## {title} (first 10)", "", *[f"- {p}" for p in items[:10]], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
