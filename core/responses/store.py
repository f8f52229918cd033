"""Where stored responses (Responses API) and their conversation histories live.

:class:`ResponseStore` is the one seam: a small blocking, thread-safe interface that callers run
in a worker thread (:mod:`core.responses.handler` does), so a shared database can replace the
embedded one when several server replicas run behind a load balancer. :class:`SQLiteResponseStore`
is the default: one SQLite file in WAL mode under the state directory (``--state-dir``, env
``INFERMCP_STATE_DIR``). Every write is one transaction; retention (a max age and a max count)
is applied on each write, and an expired response is never returned, even before it is purged.
:mod:`core.responses.postgres_store` is the shared one (``--state-url``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from core.errors import StorageError

DB_NAME = "responses.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0  # another process (a replica on the same file) holding the write lock
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id         TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    response   TEXT NOT NULL,  -- the response object as the API returned it (JSON)
    history    TEXT NOT NULL   -- the conversation it ends, as chat messages (JSON)
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
"""


@dataclass(frozen=True)
class StoredResponse:
    """One response object as returned to the client, and the conversation it ends: every input
    and output message (instructions excluded) that a follow-up turn continues from."""

    id: str
    created_at: float
    response: dict[str, Any]
    history: list[dict[str, Any]]


@dataclass(frozen=True)
class Retention:
    """How long stored responses are kept: ``max_age_s`` seconds and at most ``max_count`` of
    them (the newest); ``None`` for no limit."""

    max_age_s: float | None = 30 * 86400.0
    max_count: int | None = 10_000

    def cutoff(self, now: float) -> float | None:
        """The oldest ``created_at`` still kept at time ``now``."""
        return None if self.max_age_s is None else now - self.max_age_s


class ResponseStore(Protocol):
    """Stored responses by id. Blocking and thread-safe: call it from a worker thread."""

    def save(self, record: StoredResponse) -> None:
        """Insert (or replace) ``record`` atomically, then apply retention."""

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored, unexpired response with this id, or None."""

    def delete(self, response_id: str) -> bool:
        """Delete the response and its history; False if there was none."""

    def expire(self, now: float | None = None) -> int:
        """Delete what retention no longer keeps; the number of responses deleted."""

    def close(self) -> None:
        """Release the store's resources."""


def default_state_dir() -> Path:
    """``$INFERMCP_STATE_DIR``, else ``$XDG_STATE_HOME/infermcp``, else
    ``~/.local/state/infermcp``."""
    if os.environ.get("INFERMCP_STATE_DIR"):
        return Path(os.environ["INFERMCP_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "infermcp"


def open_store(state_dir: Path | None = None, retention: Retention = Retention()
               ) -> SQLiteResponseStore:
    """The SQLite store in ``state_dir`` (default: :func:`default_state_dir`)."""
    return SQLiteResponseStore((state_dir or default_state_dir()) / DB_NAME, retention)


class SQLiteResponseStore:
    """:class:`ResponseStore` on one SQLite file (or ``":memory:"``, which keeps nothing
    across restarts).

    One connection serves the process, behind a lock (SQLite writes one transaction at a time
    anyway); other processes on the same file wait up to ``BUSY_TIMEOUT_S`` for the write lock.
    WAL mode lets readers run beside a writer, and ``synchronous=FULL`` makes a committed
    response survive a crash of the machine, not only of the process.
    """

    def __init__(self, path: Path | str = ":memory:", retention: Retention = Retention(),
                 clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the response store {self.path}: {exc}") from exc
        self.expire()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StorageError(f"the response store {self.path} has schema version {version}; "
                               f"this infermcp reads version {SCHEMA_VERSION}")
        # executescript commits any open transaction first, so the script brings its own
        self._db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\n"
                               f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error): writers queue for the lock up
        front instead of failing on a read-to-write upgrade."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _locked(self, what: str, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except sqlite3.Error as exc:
                raise StorageError(f"the response store failed to {what}: {exc}") from exc

    def save(self, record: StoredResponse) -> None:
        row = (record.id, record.created_at, _dumps(record.response), _dumps(record.history))

        def write() -> None:
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO responses (id, created_at, response, history) "
                           "VALUES (?, ?, ?, ?)", row)
                self._expire(db, self._clock())

        self._locked("save a response", write)

    def get(self, response_id: str) -> StoredResponse | None:
        cutoff = self.retention.cutoff(self._clock())

        def read() -> tuple[str, float, str, str] | None:
            return self._db.execute(
                "SELECT id, created_at, response, history FROM responses WHERE id = ? "
                "AND (? IS NULL OR created_at >= ?)", (response_id, cutoff, cutoff)).fetchone()

        row = self._locked("read a response", read)
        if row is None:
            return None
        return StoredResponse(row[0], row[1], json.loads(row[2]), json.loads(row[3]))

    def delete(self, response_id: str) -> bool:
        def write() -> bool:
            with self._transaction() as db:
                return db.execute("DELETE FROM responses WHERE id = ?",
                                  (response_id,)).rowcount > 0

        return self._locked("delete a response", write)

    def expire(self, now: float | None = None) -> int:
        def write() -> int:
            with self._transaction() as db:
                return self._expire(db, self._clock() if now is None else now)

        return self._locked("expire old responses", write)

    def _expire(self, db: sqlite3.Connection, now: float) -> int:
        deleted = 0
        cutoff = self.retention.cutoff(now)
        if cutoff is not None:
            deleted += db.execute("DELETE FROM responses WHERE created_at < ?",
                                  (cutoff,)).rowcount
        if self.retention.max_count is not None:
            deleted += db.execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses "
                "ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (self.retention.max_count,)).rowcount
        return deleted

    def count(self) -> int:
        """How many responses are stored (expired ones not yet purged included)."""
        return self._locked("count responses", lambda: int(
            self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
