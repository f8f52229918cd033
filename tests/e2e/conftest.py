"""One real `infermcp serve` with the real default models (chat and embedding) for the whole
test session; :func:`launch` starts others (a config-file server, say)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

MAX_SEQ_LEN = 1024
READY_TIMEOUT_S = 600


@dataclass(frozen=True)
class Server:
    base_url: str
    model_id: str  # the default chat model
    log_path: Path
    embedding_model_id: str = ""
    pid: int = 0

    def health(self) -> dict[str, object]:
        return httpx.get(f"{self.base_url}/health", timeout=10).json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not ready in {READY_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")


def log_lines(path: Path, awaited: str, timeout: float = 10.0) -> list[str]:
    """The lines of the log ``path`` once one holds ``awaited`` (or the timeout has passed): an
    access line is written once its response is sent, so it may land after the reply."""
    deadline = time.monotonic() + timeout
    while awaited not in (text := path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text.splitlines()


@contextmanager
def launch_process(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m infermcp ARGS`` in its own process group, logging to ``log_path``; killed
    (with anything it started) on exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEEP_ALIVE_INTERVAL": "10000"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "infermcp", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have stopped it already
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def launch(args: list[str], log_path: Path) -> Iterator[Server]:
    """Run ``infermcp serve ARGS`` on a free port until the block ends; yield it once healthy."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with launch_process(["serve", "--port", str(port), *args], log_path) as proc:
        wait_ready(base_url, proc, log_path)
        cards = httpx.get(f"{base_url}/v1/models").json()["data"]
        chat = [c["id"] for c in cards if c["kind"] == "chat"]
        embedding = [c["id"] for c in cards if c["kind"] == "embedding"]
        yield Server(base_url, chat[0] if chat else "", log_path,
                     embedding[0] if embedding else "", proc.pid)


@contextmanager
def serve_each_twice(files: dict[str, Path], folder: Path) -> Iterator[Server]:
    """One server of every model file, each twice: ``name`` in its own format (the default)
    and ``name-f32`` in float32 (``isq = "none"``)."""
    entries = [f'[[models]]\nid = "{name}"\npath = "{path}"\nmax_seq_len = 256\nmax_seqs = 4\n'
               f'[[models]]\nid = "{name}-f32"\npath = "{path}"\nisq = "none"\n'
               f'max_seq_len = 256\nmax_seqs = 4\n' for name, path in files.items()]
    config = folder / "models.toml"
    config.write_text("\n".join(entries))
    with launch(["--config", str(config)], folder / "server.log") as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every server these tests start (HTTP or stdio) keeps its stored responses here, never in
    the user's state directory (``INFERMCP_STATE_DIR`` is inherited by each server process)."""
    path = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFERMCP_STATE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--seed", "0", "--max-seq-len", str(MAX_SEQ_LEN), "--max-seqs", "16"]
    with launch(args, log_path) as server:
        yield server


@pytest.fixture(scope="session")
def uncached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default chat model without prefix caching, for tests that compare a request's
    tokens alone and in a batch. With the cache, a prompt seen before prefills only past its
    cached blocks, in chunks of other lengths whose float rounding differs in the last bits,
    and the 4-bit kernel's int8 activations can turn such a difference into another token."""
    log_path = tmp_path_factory.mktemp("uncached") / "server.log"
    args = ["--seed", "0", "--max-seq-len", str(MAX_SEQ_LEN), "--max-seqs", "16",
            "--no-prefix-caching", "--embedding-model", "none"]
    with launch(args, log_path) as server:
        yield server


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="session")
def aclient(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused",
                              max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def tokenizer(server: Server) -> object:
    """The served model's own tokenizer (from the metadata cache the server just filled)."""
    from core.models import loader
    from core.models.tokenizer import Tokenizer

    return Tokenizer.load(loader.resolve(None).model_dir)
