"""--threads and the threads' wait policy, as a server reports them in /health."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai

from core.engine import threads
from tests.e2e.conftest import Server, launch


def test_the_default_fits_the_count_to_the_load(server: Server) -> None:
    cpus = len(threads.available_cpus())
    cpu = server.health()["cpu"]
    assert isinstance(cpu, dict) and 1 <= cpu["threads"] <= cpus
    assert cpu | {"threads": 0} == {"threads": 0, "cpus": cpus, "policy": "adaptive",
                                    "wait": "libgomp's default"}


def test_threads_flag_sets_the_count_and_the_model_still_answers(tmp_path: Path) -> None:
    with launch(["--threads", "1", "--embedding-model", "none"], tmp_path / "log") as server:
        cpu = httpx.get(f"{server.base_url}/health").json()["cpu"]
        assert (cpu["threads"], cpu["policy"]) == (1, "fixed")
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        answer = client.completions.create(model=server.model_id, prompt="Hello", max_tokens=4,
                                           extra_body={"ignore_eos": True})  # sampled: no early end
        assert answer.usage is not None and answer.usage.completion_tokens == 4


def test_a_bad_thread_count_ends_start_up_with_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "infermcp", "serve", "--threads", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["infermcp: error: --threads must be >= 1"]
