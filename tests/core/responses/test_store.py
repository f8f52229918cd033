"""The response store, on SQLite and on PostgreSQL alike: round trip, delete, retention,
concurrent writers and readers, restarts. (tests/core/responses/test_postgres_store.py has what
only PostgreSQL does: its schema versions, its connection errors.)"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.errors import StorageError
from core.responses.postgres_store import PostgresResponseStore
from core.responses.store import (
    DB_NAME,
    Retention,
    SQLiteResponseStore,
    StoredResponse,
    default_state_dir,
    open_store,
)
from tests.pg_server import PostgresServer

HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello ✓"}]
Store = SQLiteResponseStore | PostgresResponseStore


def record(i: int | str, created_at: float = 1000.0) -> StoredResponse:
    return StoredResponse(f"resp_{i}", created_at, {"id": f"resp_{i}", "object": "response",
                                                     "output": [], "n": i}, HISTORY)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Opens stores on one place (a file, a database), as many times as a test asks: each
    opening is what a server process (a replica, a restart) would have."""

    name: str
    opener: Callable[[Retention, Callable[[], float]], Store]
    opened: list[Store] = field(default_factory=list)

    def open(self, retention: Retention | None = None,
             clock: Callable[[], float] | None = None) -> Store:
        store = self.opener(retention or Retention(), clock or Clock())
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        def opener(retention: Retention, clock: Callable[[], float]) -> Store:
            return SQLiteResponseStore(tmp_path / DB_NAME, retention, clock)
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_database()

        def opener(retention: Retention, clock: Callable[[], float]) -> Store:
            return PostgresResponseStore(url, retention, clock)
    backend = Backend(request.param, opener)
    yield backend
    for store in backend.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def test_round_trip(store: Store) -> None:
    store.save(record(1))
    assert store.get("resp_1") == record(1)
    assert store.get("resp_2") is None


def test_save_replaces_the_same_id(store: Store) -> None:
    store.save(record(1))
    store.save(StoredResponse("resp_1", 1000.0, {"v": 2}, []))
    assert store.get("resp_1") == StoredResponse("resp_1", 1000.0, {"v": 2}, [])
    assert store.count() == 1


def test_delete(store: Store) -> None:
    store.save(record(1))
    store.save(record(2))
    assert store.delete("resp_1") is True
    assert store.get("resp_1") is None and store.get("resp_2") == record(2)
    assert store.delete("resp_1") is False


def test_expired_responses_are_never_returned_then_purged(backend: Backend) -> None:
    clock = Clock(1000.0)
    store = backend.open(Retention(max_age_s=60, max_count=None), clock)
    store.save(record("old", created_at=1000.0))
    store.save(record("new", created_at=1050.0))
    clock.now = 1000.0 + 60
    assert store.get("resp_old") is not None and store.expire() == 0
    clock.now = 1000.0 + 61
    assert store.get("resp_old") is None  # expired, not yet purged
    assert store.count() == 2
    assert store.expire() == 1
    assert store.count() == 1 and store.get("resp_new") is not None


def test_max_count_keeps_the_newest(backend: Backend) -> None:
    store = backend.open(Retention(max_age_s=None, max_count=3))
    for i in range(5):
        store.save(record(i, created_at=1000.0 + i))
    assert store.count() == 3
    assert [store.get(f"resp_{i}") is not None for i in range(5)] == [False, False, True, True,
                                                                      True]


def test_no_limits_keep_everything(backend: Backend) -> None:
    clock = Clock()
    store = backend.open(Retention(None, None), clock)
    store.save(record(1, created_at=0.0))
    clock.now = 1e12
    assert store.expire() == 0 and store.get("resp_1") == record(1, created_at=0.0)


def test_reopening_keeps_the_responses(backend: Backend) -> None:
    first = backend.open(Retention(max_age_s=None))
    first.save(record(1))
    first.close()
    assert backend.open(Retention(max_age_s=None)).get("resp_1") == record(1)


def test_concurrent_writers_lose_nothing(store: Store) -> None:
    threads, per_thread = 8, 40

    def write(t: int) -> None:
        for i in range(per_thread):
            store.save(record(f"{t}_{i}"))

    run_threads(write, threads)
    assert store.count() == threads * per_thread
    assert all(store.get(f"resp_{t}_{i}") == record(f"{t}_{i}")
               for t in range(threads) for i in range(per_thread))


def test_concurrent_turns_of_one_conversation_stay_whole(backend: Backend) -> None:
    """Threads continue one conversation at once, each reading the turn it follows and saving
    the next, and all of them replace one shared id: every turn is readable afterwards with the
    whole history it was saved with, and the shared one is one writer's record, not a mix."""
    store = backend.open()
    store.save(StoredResponse("resp_root", 1000.0, {"id": "resp_root"}, HISTORY))
    threads, turns = 6, 12

    def turn(t: int, i: int) -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"{t}.{i}"}, {"role": "assistant", "content": "ok"}]

    def converse(t: int) -> None:
        previous = "resp_root"
        for i in range(turns):
            parent = store.get(previous)
            assert parent is not None
            history = [*parent.history, *turn(t, i)]
            rid = f"resp_{t}_{i}"
            store.save(StoredResponse(rid, 1000.0, {"id": rid, "previous": previous}, history))
            store.save(StoredResponse("resp_shared", 1000.0, {"t": t, "i": i}, history))
            previous = rid

    run_threads(converse, threads)
    for t in range(threads):
        for i in range(turns):
            got = store.get(f"resp_{t}_{i}")
            assert got is not None
            assert got.history == HISTORY + [m for j in range(i + 1) for m in turn(t, j)]
    shared = store.get("resp_shared")
    assert shared is not None
    t, i = shared.response["t"], shared.response["i"]
    assert shared.history == HISTORY + [m for j in range(i + 1) for m in turn(t, j)]
    assert store.count() == 1 + threads * turns + 1


def test_concurrent_writers_keep_exactly_max_count(backend: Backend) -> None:
    """Retention under concurrent saves on two stores (replicas): no committed state ever holds
    more than ``max_count`` (each save's purge sees the other saves' commits), no writer
    deadlocks, and the newest ``max_count`` of everything saved remain."""
    stores = [backend.open(Retention(max_age_s=None, max_count=10)) for _ in range(2)]
    threads, per_thread = 8, 30

    def write(t: int) -> None:
        for i in range(per_thread):
            stores[t % 2].save(record(f"{t}_{i}", created_at=1000.0 + i * threads + t))
            assert stores[t % 2].count() <= 10

    run_threads(write, threads)
    newest = sorted(((1000.0 + i * threads + t, f"resp_{t}_{i}") for t in range(threads)
                     for i in range(per_thread)), reverse=True)[:10]
    assert stores[0].count() == 10
    assert all(stores[0].get(rid) is not None for _, rid in newest)


def test_two_stores_on_one_place_lose_nothing(backend: Backend) -> None:
    """Two stores on one file or database, as two server processes (replicas) would have."""
    stores = [backend.open() for _ in range(2)]

    def write(s: int) -> None:
        for i in range(60):
            stores[s].save(record(f"{s}_{i}"))
            if i % 2:
                assert stores[s].delete(f"resp_{s}_{i - 1}")

    run_threads(write, 2)
    assert stores[0].count() == stores[1].count() == 2 * 30


def run_threads(target: Callable[[int], None], count: int) -> None:
    """``target(0)`` … ``target(count - 1)`` in threads at once; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / DB_NAME)
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99"):
        SQLiteResponseStore(tmp_path / DB_NAME)


def test_open_store_reopens_the_state_dir(tmp_path: Path) -> None:
    first = open_store(tmp_path, Retention(max_age_s=None))
    first.save(record(1))
    first.close()
    again = open_store(tmp_path, Retention(max_age_s=None))
    assert again.path == str(tmp_path / DB_NAME) and again.get("resp_1") == record(1)
    again.close()


def test_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open the response store"):
        open_store(tmp_path / "file")


def test_in_memory_store() -> None:
    store = SQLiteResponseStore(clock=Clock())
    store.save(record(1))
    assert store.get("resp_1") == record(1)


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFERMCP_STATE_DIR", str(tmp_path / "x"))
    assert default_state_dir() == tmp_path / "x"
    monkeypatch.delenv("INFERMCP_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "infermcp"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == Path.home() / ".local" / "state" / "infermcp"
