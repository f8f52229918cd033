"""The response store on PostgreSQL: ``--state-url postgresql://…`` (env ``INFERMCP_STATE_URL``),
the database that several server replicas behind a load balancer share.

:class:`PostgresResponseStore` implements :class:`~core.responses.store.ResponseStore` on
psycopg 3 with a *blocking* connection pool (:class:`psycopg_pool.ConnectionPool`), not the
async one. The seam is blocking and every caller already runs it in a worker thread
(``anyio.to_thread``), so each worker thread borrows a connection of its own and N requests
store at once on N connections. An ``AsyncConnectionPool`` would need an event loop of its own
here (the request's loop is not the worker thread's) and a bridge that blocks the worker on it
for every call: one more thread hop and a second loop, for no more concurrency. An async pool
pays off only when the handler awaits the store on its event loop directly, which changes the
seam for both stores.

The schema is versioned: the ``schema_version`` table lists the versions applied, and
:data:`MIGRATIONS` (version n is ``MIGRATIONS[n - 1]``) brings a database up to
:data:`SCHEMA_VERSION` at start-up, in one transaction under an advisory lock (replicas that
start together migrate once). A database of a newer version is refused. Version 1 is the SQLite
layout with ``jsonb`` columns, so JSON objects come back with their keys in jsonb's order, and a
string holding the NUL character (``\\u0000``), which jsonb cannot store, fails to save with a
:class:`~core.errors.StorageError` instead of being altered.

Each save, delete and expiry is one transaction. Saves and expiries take one transaction-scoped
advisory lock first: retention's deletes then count every committed response and two writers
never lock the same rows in opposite orders (a deadlock). Saves are short, so serializing them
costs little. Deletes lock only their row. Passwords never appear in messages (:func:`redacted`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from core.errors import StorageError
from core.responses.store import Retention, StoredResponse

CONNECT_TIMEOUT_S = 10  # unless the URL sets connect_timeout
POOL_MAX_SIZE = 10  # connections per process; more worker threads wait for one
POOL_TIMEOUT_S = 30.0  # how long a worker thread waits for a connection
WRITE_LOCK = 0x696E6665726D6370  # the advisory lock key: "infermcp" in ASCII

MIGRATIONS: tuple[str, ...] = (
    # 1: the SQLite layout (core/responses/store.py), the JSON columns as jsonb
    """
    CREATE TABLE responses (
        id         TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        response   JSONB NOT NULL,  -- the response object as the API returned it
        history    JSONB NOT NULL   -- the conversation it ends, as chat messages
    );
    CREATE INDEX responses_by_age ON responses (created_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def redacted(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" of an IPv6 host
        return "(a URL that does not parse)"
    user, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:***@{hosts}" if at and ":" in user else parts.netloc
    query = "&".join("password=***" if p.lower().startswith("password=") else p
                     for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class PostgresResponseStore:
    """:class:`~core.responses.store.ResponseStore` on a PostgreSQL database.

    Connects, migrates and applies retention at once: a server that cannot be reached, a
    refused login or a newer schema is a :class:`~core.errors.StorageError` here, at start-up.
    Later, a broken connection is replaced when it is next borrowed (the pool checks it).
    """

    def __init__(self, url: str, retention: Retention | None = None,
                 clock: Callable[[], float] = time.time, *, max_size: int = POOL_MAX_SIZE
                 ) -> None:
        self.url = redacted(url)
        self.retention = retention or Retention()
        self._clock = clock
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:  # its message may quote the URL, password and all
            raise StorageError(f"cannot open the response store {self.url}: not a valid "
                               f"PostgreSQL URL: {str(exc).replace(url, self.url)}") from None
        self._password = str(params.get("password") or "")
        options: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            with psycopg.connect(url, **options) as conn:  # the real error, not a pool timeout
                self._migrate(conn)
            self._pool = ConnectionPool(url, min_size=1, max_size=max_size, kwargs=options,
                                        timeout=POOL_TIMEOUT_S, open=False,
                                        check=ConnectionPool.check_connection,
                                        name="infermcp-responses")
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open the response store {self.url}: "
                               f"{self._scrub(exc)}") from None
        self.expire()

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                         " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StorageError(f"the response store {self.url} has schema version "
                                   f"{version}; this infermcp reads version {SCHEMA_VERSION}")
            for number in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[number - 1])
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    def _scrub(self, exc: BaseException) -> str:
        message = str(exc)
        return message.replace(self._password, "***") if self._password else message

    @contextmanager
    def _connection(self, what: str, *, write: bool = False
                    ) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, in one transaction holding the write lock when ``write``;
        psycopg's errors become StorageError."""
        try:
            with self._pool.connection() as conn:
                if not write:
                    yield conn
                    return
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                    yield conn
        except psycopg.Error as exc:
            raise StorageError(f"the response store failed to {what}: "
                               f"{self._scrub(exc)}") from None

    def save(self, record: StoredResponse) -> None:
        with self._connection("save a response", write=True) as conn:
            conn.execute(
                "INSERT INTO responses (id, created_at, response, history) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                "created_at = EXCLUDED.created_at, response = EXCLUDED.response, "
                "history = EXCLUDED.history",
                (record.id, record.created_at, Jsonb(record.response), Jsonb(record.history)))
            self._expire(conn, self._clock())

    def get(self, response_id: str) -> StoredResponse | None:
        cutoff = self.retention.cutoff(self._clock())
        with self._connection("read a response") as conn:
            if cutoff is None:
                cursor = conn.execute("SELECT id, created_at, response, history FROM responses "
                                      "WHERE id = %s", (response_id,))
            else:
                cursor = conn.execute("SELECT id, created_at, response, history FROM responses "
                                      "WHERE id = %s AND created_at >= %s", (response_id, cutoff))
            row = cursor.fetchone()
        return None if row is None else StoredResponse(row[0], row[1], row[2], row[3])

    def delete(self, response_id: str) -> bool:
        with self._connection("delete a response") as conn, conn.transaction():
            return conn.execute("DELETE FROM responses WHERE id = %s",
                                (response_id,)).rowcount > 0

    def expire(self, now: float | None = None) -> int:
        with self._connection("expire old responses", write=True) as conn:
            return self._expire(conn, self._clock() if now is None else now)

    def _expire(self, conn: psycopg.Connection[Any], now: float) -> int:
        deleted = 0
        cutoff = self.retention.cutoff(now)
        if cutoff is not None:
            deleted += conn.execute("DELETE FROM responses WHERE created_at < %s",
                                    (cutoff,)).rowcount
        if self.retention.max_count is not None:
            deleted += conn.execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses "
                "ORDER BY created_at DESC, id DESC OFFSET %s)",
                (self.retention.max_count,)).rowcount
        return deleted

    def count(self) -> int:
        """How many responses are stored (expired ones not yet purged included)."""
        with self._connection("count responses") as conn:
            row = conn.execute("SELECT count(*) FROM responses").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._pool.close()
