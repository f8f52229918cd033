"""--threads and the threads' wait policy, as a server reports them in /health."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai

from core.engine import threads
from tests.e2e.conftest import Server, launch


def test_the_default_is_every_cpu_waiting_briefly(server: Server) -> None:
    cpu = server.health()["cpu"]
    assert cpu == {"threads": threads.available_cpus(), "cpus": threads.available_cpus(),
                   "wait": f"spin {threads.SPIN_COUNT} rounds, then sleep"}


def test_threads_flag_sets_the_count_and_the_model_still_answers(tmp_path: Path) -> None:
    with launch(["--threads", "1", "--embedding-model", "none"], tmp_path / "log") as server:
        assert httpx.get(f"{server.base_url}/health").json()["cpu"]["threads"] == 1
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        answer = client.completions.create(model=server.model_id, prompt="Hello", max_tokens=4)
        assert answer.usage is not None and answer.usage.completion_tokens == 4


def test_a_bad_thread_count_ends_start_up_with_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "infermcp", "serve", "--threads", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["infermcp: error: --threads must be >= 1"]
