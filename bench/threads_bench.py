"""One client's decode speed on an idle machine and beside other busy processes, per thread and
wait policy of the CPU kernels (see :mod:`core.engine.threads`).

    python -m bench.threads_bench [--model PATH] [--rounds 2] [--hogs 2] --out bench/threads.md

For each round and each policy in turn (alternating, as this machine drifts): start
``infermcp serve`` (the bundled model, or ``--model``) with the policy's environment, send one
warm-up request, then twice a streamed chat completion of ``--tokens`` tokens (unique prompts,
``ignore_eos``) while the machine is idle, then twice more while ``--hogs`` processes spin a
core each (as a parallel compile does). The decode rate is (tokens - 1) / (end - first token).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from bench.loadgen import send_request
from bench.serve_bench import free_port, machine_summary

# policy -> the environment it sets (every other thread or wait variable unset)
CPUS = str(len(os.sched_getaffinity(0)))
POLICIES: dict[str, dict[str, str]] = {
    "adaptive (the default)": {},
    "every CPU, 10000-round spin (--threads N)": {"OMP_NUM_THREADS": CPUS},
    "every CPU, libgomp's own 300000-round spin": {"OMP_NUM_THREADS": CPUS,
                                                    "GOMP_SPINCOUNT": "300000"},
    "every CPU, no spin": {"OMP_NUM_THREADS": CPUS, "GOMP_SPINCOUNT": "0"},
    "one thread": {"OMP_NUM_THREADS": "1"},
}
HOG = "import time\nend = time.time() + 900\nwhile time.time() < end:\n    pass\n"
WAIT_VARIABLES = ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def start(policy: dict[str, str], model: str | None, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(policy, HF_HUB_OFFLINE="1")
    cmd = [".venv/bin/infermcp", "serve", "--port", str(port), "--embedding-model", "none"]
    proc = subprocess.Popen([*cmd, *(["-m", model] if model else [])], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server was not ready in 600 s")


def decode_rate(base_url: str, model: str, tokens: int) -> float:
    async def one() -> float:
        async with httpx.AsyncClient(timeout=900) as client:
            r = await send_request(client, base_url, model, f"{uuid.uuid4()} Tell me a story.",
                                   tokens)
        if r.error is not None or not r.itls:
            raise SystemExit(f"request failed: {r.error}")
        return (r.output_tokens - 1) / sum(r.itls)

    return asyncio.run(one())


def measure(policy: dict[str, str], model: str | None, tokens: int, hogs: int
            ) -> tuple[list[float], list[float], dict[str, object]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    proc = start(policy, model, port)
    try:
        served = httpx.get(f"{base_url}/v1/models").json()["data"][0]["id"]
        cpu = httpx.get(f"{base_url}/health").json()["cpu"]
        decode_rate(base_url, served, 8)
        idle = [decode_rate(base_url, served, tokens) for _ in range(2)]
        spinning = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
        try:
            time.sleep(1)
            busy = [decode_rate(base_url, served, tokens) for _ in range(2)]
        finally:
            for hog in spinning:
                hog.kill()
                hog.wait()
    finally:
        proc.terminate()
        proc.wait()
    return idle, busy, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a .gguf or model directory (default: the bundled one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--hogs", type=int, default=2, help="busy processes beside the server")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for round_ in range(1, args.rounds + 1):
        for name, policy in POLICIES.items():
            print(f"round {round_}: {name} ...", flush=True)
            idle, busy, cpu = measure(policy, args.model, args.tokens, args.hogs)
            rows.append((round_, name, cpu, idle, busy))
            print(f"  idle {statistics.mean(idle):.1f} tok/s, busy {statistics.mean(busy):.1f}",
                  flush=True)
    lines = [
        "# Decoding beside other busy processes: threads and their wait policy", "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"- machine: {machine_summary()}",
        f"- model: {args.model or 'the bundled default'}; one client, {args.tokens} tokens a "
        f"request, unique prompts; busy: {args.hogs} processes spinning a core each",
        f"- command: `python -m bench.threads_bench {' '.join(sys.argv[1:])}`", "",
        "| round | policy | /health cpu at start | idle tok/s | busy tok/s |",
        "|---|---|---|---:|---:|",
    ]
    for round_, name, cpu, idle, busy in rows:
        lines.append(f"| {round_} | {name} | {cpu['policy']}, {cpu['threads']} threads, "
                     f"{cpu['wait']} | "
                     f"{' / '.join(f'{v:.1f}' for v in idle)} | "
                     f"{' / '.join(f'{v:.1f}' for v in busy)} |")
    lines += ["", "Each cell holds the two requests' decode rates (tokens after the first over "
              "the time after the first token). The adaptive policy starts with every CPU and "
              "fits the count once a second to the CPUs the other processes leave free."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
