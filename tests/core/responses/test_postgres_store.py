"""What only the PostgreSQL store does: its versioned schema, its connection errors (never
showing the password), reconnecting, and what jsonb cannot hold. test_store.py runs the store's
behaviour on it and on SQLite alike."""

from __future__ import annotations

import threading

import psycopg
import pytest

from core.errors import StorageError
from core.responses.postgres_store import SCHEMA_VERSION, PostgresResponseStore, redacted
from core.responses.store import Retention, StoredResponse
from tests.pg_server import PostgresServer, free_port


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode()).fetchall()


def test_a_new_database_gets_the_current_schema(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    PostgresResponseStore(url).close()
    assert query(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)] == [(1,)]
    assert query(url, "SELECT column_name, data_type FROM information_schema.columns WHERE "
                      "table_name = 'responses' ORDER BY ordinal_position") == [
        ("id", "text"), ("created_at", "double precision"), ("response", "jsonb"),
        ("history", "jsonb")]
    assert query(url, "SELECT indexdef LIKE '%(created_at)' FROM pg_indexes "
                      "WHERE indexname = 'responses_by_age'") == [(True,)]


def test_replicas_starting_together_migrate_once(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    stores: list[PostgresResponseStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresResponseStore(url))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=start) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 4
    assert query(url, "SELECT version FROM schema_version") == [(1,)]


def test_a_newer_schema_is_refused(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    PostgresResponseStore(url).close()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(StorageError, match="has schema version 99; this infermcp reads "
                                           "version 1"):
        PostgresResponseStore(url)


def test_a_wrong_password_is_refused_without_showing_it(postgres: PostgresServer) -> None:
    url = postgres.url(password="not-the-Pa55word")
    with pytest.raises(StorageError) as caught:
        PostgresResponseStore(url)
    message = caught.value.message
    assert message.startswith(f"cannot open the response store postgresql://infermcp:***@"
                              f"127.0.0.1:{postgres.port}/postgres: ")
    assert "password authentication failed" in message
    assert "not-the-Pa55word" not in message


def test_an_unreachable_server_is_a_storage_error() -> None:
    url = f"postgresql://someone:Secret1@127.0.0.1:{free_port()}/db?connect_timeout=5"
    with pytest.raises(StorageError, match="Connection refused") as caught:
        PostgresResponseStore(url)
    assert "Secret1" not in caught.value.message and "someone:***@" in caught.value.message


@pytest.mark.parametrize(("url", "reason"), [
    ("postgresql://u:Secret1@h/db?bogus=1", 'invalid URI query parameter: "bogus"'),
    ("postgresql://u:Secret1@[h/db", "IPv6 host address in URI"),  # psycopg quotes the URL
])
def test_a_malformed_url_is_not_echoed(url: str, reason: str) -> None:
    with pytest.raises(StorageError, match="not a valid PostgreSQL URL") as caught:
        PostgresResponseStore(url)
    assert reason in caught.value.message and "Secret1" not in caught.value.message


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:p%40ss@db.example:5432/x", "postgresql://u:***@db.example:5432/x"),
    ("postgresql://u@db/x?password=p&sslmode=require",
     "postgresql://u@db/x?password=***&sslmode=require"),
    ("postgresql://db/x", "postgresql://db/x"),
    ("postgresql://u:p@[db/x", "(a URL that does not parse)"),
    ("postgres://u:p@h1:5432,h2:5433/x", "postgres://u:***@h1:5432,h2:5433/x"),
])
def test_redacted(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_broken_connections_are_replaced(postgres: PostgresServer) -> None:
    """The server closed every connection (a restart, a failover): the next call reconnects."""
    url = postgres.new_database()
    store = PostgresResponseStore(url, Retention(None, None))
    store.save(StoredResponse("resp_1", 1.0, {"a": 1}, []))
    query(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert store.get("resp_1") == StoredResponse("resp_1", 1.0, {"a": 1}, [])
    store.close()


def test_json_that_jsonb_cannot_hold_is_a_storage_error(postgres: PostgresServer) -> None:
    """jsonb has no NUL character: such a response fails to save, loudly, unaltered."""
    store = PostgresResponseStore(postgres.new_database())
    with pytest.raises(StorageError, match="failed to save a response"):
        store.save(StoredResponse("resp_1", 1.0, {"text": "a\x00b"}, []))
    assert store.get("resp_1") is None and store.count() == 0
    store.close()
