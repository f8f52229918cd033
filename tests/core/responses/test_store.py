"""The SQLite response store: round trip, delete, retention, concurrent writers, restarts."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from core.errors import StorageError
from core.responses.store import (
    DB_NAME,
    Retention,
    SQLiteResponseStore,
    StoredResponse,
    default_state_dir,
    open_store,
)

HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello ✓"}]


def record(i: int | str, created_at: float = 1000.0) -> StoredResponse:
    return StoredResponse(f"resp_{i}", created_at, {"id": f"resp_{i}", "object": "response",
                                                     "output": [], "n": i}, HISTORY)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> SQLiteResponseStore:
    return SQLiteResponseStore(tmp_path / DB_NAME, clock=Clock())


def test_round_trip(store: SQLiteResponseStore) -> None:
    store.save(record(1))
    assert store.get("resp_1") == record(1)
    assert store.get("resp_2") is None


def test_save_replaces_the_same_id(store: SQLiteResponseStore) -> None:
    store.save(record(1))
    store.save(StoredResponse("resp_1", 1000.0, {"v": 2}, []))
    assert store.get("resp_1") == StoredResponse("resp_1", 1000.0, {"v": 2}, [])
    assert store.count() == 1


def test_delete(store: SQLiteResponseStore) -> None:
    store.save(record(1))
    store.save(record(2))
    assert store.delete("resp_1") is True
    assert store.get("resp_1") is None and store.get("resp_2") == record(2)
    assert store.delete("resp_1") is False


def test_expired_responses_are_never_returned_then_purged(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    store = SQLiteResponseStore(tmp_path / DB_NAME, Retention(max_age_s=60, max_count=None),
                                clock)
    store.save(record("old", created_at=1000.0))
    store.save(record("new", created_at=1050.0))
    clock.now = 1000.0 + 60
    assert store.get("resp_old") is not None and store.expire() == 0
    clock.now = 1000.0 + 61
    assert store.get("resp_old") is None  # expired, not yet purged
    assert store.count() == 2
    assert store.expire() == 1
    assert store.count() == 1 and store.get("resp_new") is not None


def test_max_count_keeps_the_newest(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / DB_NAME, Retention(max_age_s=None, max_count=3),
                                Clock())
    for i in range(5):
        store.save(record(i, created_at=1000.0 + i))
    assert store.count() == 3
    assert [store.get(f"resp_{i}") is not None for i in range(5)] == [False, False, True, True,
                                                                      True]


def test_no_limits_keep_everything(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteResponseStore(tmp_path / DB_NAME, Retention(None, None), clock)
    store.save(record(1, created_at=0.0))
    clock.now = 1e12
    assert store.expire() == 0 and store.get("resp_1") == record(1, created_at=0.0)


def test_reopening_keeps_the_responses(tmp_path: Path) -> None:
    first = open_store(tmp_path, Retention(max_age_s=None))
    first.save(record(1))
    first.close()
    again = open_store(tmp_path, Retention(max_age_s=None))
    assert again.get("resp_1") == record(1)
    again.close()


def test_file_is_in_wal_mode(store: SQLiteResponseStore) -> None:
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_writers_lose_nothing(store: SQLiteResponseStore) -> None:
    threads, per_thread = 8, 40

    def write(t: int) -> None:
        for i in range(per_thread):
            store.save(record(f"{t}_{i}"))

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert store.count() == threads * per_thread
    assert all(store.get(f"resp_{t}_{i}") == record(f"{t}_{i}")
               for t in range(threads) for i in range(per_thread))


def test_two_stores_on_one_file_lose_nothing(tmp_path: Path) -> None:
    """Two connections on one file, as two server processes (replicas) would have."""
    stores = [SQLiteResponseStore(tmp_path / DB_NAME, clock=Clock()) for _ in range(2)]
    errors: list[BaseException] = []

    def write(s: int) -> None:
        try:
            for i in range(60):
                stores[s].save(record(f"{s}_{i}"))
                if i % 2:
                    assert stores[s].delete(f"resp_{s}_{i - 1}")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(s,)) for s in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert stores[0].count() == stores[1].count() == 2 * 30


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99"):
        SQLiteResponseStore(tmp_path / DB_NAME)


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
