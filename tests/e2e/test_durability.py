"""The response store survives the server: SIGKILL in the middle of writes loses no response
the API had answered (SQLite WAL, synchronous=FULL), and SIGTERM with requests in flight lets
them finish, stores them and closes the database cleanly (WAL checkpointed).

Each test runs its own server with its own ``--state-dir``, fires many concurrent
``POST /v1/responses`` and keeps every response that came back whole with a 200: those are
committed. After the stop it restarts the server on the same directory and fetches each one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.responses.store import DB_NAME
from tests.e2e.conftest import free_port, launch_process, wait_ready

ARGS = ["--embedding-model", "none", "--max-seq-len", "256", "--seed", "0", "--max-seqs", "8"]
WORKERS = 8
COMMITTED_BEFORE_STOP = 24  # answered responses before the signal
EXIT_MARGIN_S = 60  # bounds a hang; not a timing check


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (refused, or cut by the stop)
    response: dict[str, Any] | None  # the 200 body, when it came back whole


@dataclass
class Load:
    """WORKERS clients posting stored responses back to back until stopped, each on a new
    connection (no keep-alive race with a server closing idle connections)."""

    base_url: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def committed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [o.response for o in self.outcomes if o.response is not None]

    def worker(self, index: int) -> None:
        for n in range(100_000):
            if self.stop.is_set():
                return
            started = time.monotonic()
            # half the workers ask for more tokens: batched together, equal requests all end in
            # the same step, and a signal could fall where none is in flight
            body = {"input": f"Count to {index * 100_000 + n}.",
                    "max_output_tokens": 2 if index % 2 else 24,
                    "store": True, "temperature": 0,
                    "metadata": {"worker": str(index), "n": str(n)}}
            status, response = None, None
            try:
                r = httpx.post(f"{self.base_url}/v1/responses", json=body, timeout=120,
                               headers={"Connection": "close"})
                status = r.status_code
                if status == 200:
                    response = r.json()
            except (httpx.TransportError, ValueError):  # refused, or the server went away
                pass
            with self._lock:
                self.outcomes.append(Outcome(started, time.monotonic(), status, response))
            if response is None:
                time.sleep(0.05)  # refused (stopping): do not spin

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(self.worker, i) for i in range(WORKERS)]
            try:
                yield
            finally:
                self.stop.set()
                for future in futures:
                    future.result()

    def wait_committed(self, count: int) -> None:
        for _ in range(6000):
            if len(self.committed()) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"only {len(self.committed())} responses in 5 minutes")


@contextlib.contextmanager
def serving(state_dir: Path, log: Path, *extra: str
            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A server keeping its responses in ``state_dir``: (base_url, process) once healthy."""
    port = free_port()
    with launch_process(["serve", "--port", str(port), *ARGS, "--state-dir", str(state_dir),
                         *extra], log) as proc:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, proc, log)
        yield base_url, proc


def integrity(db_path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return db.execute("PRAGMA integrity_check").fetchall()


def check_all_there(state_dir: Path, log: Path, committed: list[dict[str, Any]]) -> int:
    """Restart on ``state_dir``: every committed response is served as it was answered, and
    the database is sound. The number of responses stored (answered or not)."""
    with serving(state_dir, log) as (base_url, _), \
            httpx.Client(base_url=base_url, timeout=60) as client:
        lost = [r["id"] for r in committed
                if client.get(f"/v1/responses/{r['id']}").json() != r]
        assert lost == [], f"{len(lost)} of {len(committed)} committed responses lost"
        assert integrity(state_dir / DB_NAME) == [("ok",)]
        with contextlib.closing(sqlite3.connect(state_dir / DB_NAME)) as db:
            (stored,) = db.execute("SELECT COUNT(*) FROM responses").fetchone()
    return int(stored)


def test_sigkill_in_the_middle_of_writes_loses_no_committed_response(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with serving(state_dir, tmp_path / "server.log") as (base_url, proc):
        load = Load(base_url)
        with load.running():
            load.wait_committed(COMMITTED_BEFORE_STOP)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    committed = load.committed()
    cut = [o for o in load.outcomes if o.response is None]
    assert cut, "no request was cut by the kill"  # it did land in the middle of the writes
    assert (state_dir / f"{DB_NAME}-wal").stat().st_size > 0  # the restart replays the WAL
    stored = check_all_there(state_dir, tmp_path / "restarted.log", committed)
    assert stored >= len(committed)
    print(f"SIGKILL: {len(committed)} responses committed before the kill, {len(cut)} "
          f"requests cut, {stored} stored after the restart, lost 0")


def wait_running(base_url: str) -> None:
    """Until the engine runs a request: a signal that fell between two (every request ended,
    the next not yet read) would leave nothing in flight to finish."""
    for _ in range(1000):
        if httpx.get(f"{base_url}/health", timeout=10).json()["engine"]["running"]:
            return
        time.sleep(0.005)
    raise AssertionError("the engine never ran a request under load")


def test_sigterm_finishes_stores_and_closes_the_database_cleanly(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    log = tmp_path / "server.log"
    with serving(state_dir, log, "--shutdown-grace", "120") as (base_url, proc):
        load = Load(base_url)
        with load.running():
            load.wait_committed(COMMITTED_BEFORE_STOP)
            wait_running(base_url)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120 + EXIT_MARGIN_S) == 0
    committed = load.committed()
    finished = [o for o in load.outcomes
                if o.started < signalled < o.ended and o.response is not None]
    assert finished, "no request in flight at the signal finished"
    # the server answered every request it took with a 200 (or refused it: 503 shutting_down)
    # and each 200 arrived whole; the others were refused before it read them (connection)
    answered = re.findall(r"method=POST path=/v1/responses status=(\d+)", log.read_text())
    assert set(answered) <= {"200", "503"} and answered.count("200") == len(committed)
    assert {o.status for o in load.outcomes} <= {200, 503, None}
    wal = state_dir / f"{DB_NAME}-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # closed cleanly: checkpointed
    assert integrity(state_dir / DB_NAME) == [("ok",)]
    stored = check_all_there(state_dir, tmp_path / "restarted.log", committed)
    assert stored == len(committed)  # and nothing was stored unanswered
    print(f"SIGTERM: {len(committed)} responses committed ({len(finished)} of them in flight "
          f"at the signal), {stored} stored after the restart, lost 0")
