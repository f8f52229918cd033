"""Marks every test under tests/e2e as ``e2e`` (a few others mark themselves):
``pytest -m "not e2e"`` runs the fast layer. The ``postgres`` fixture is the session's own
PostgreSQL server (the response store's second implementation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_server import PostgresServer, PostgresUnavailable, running_server

E2E = Path(__file__).parent / "e2e"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m "not e2e"`` the end-to-end modules are not even imported (seconds saved)."""
    if config.getoption("markexpr") == "not e2e" and collection_path.is_relative_to(E2E):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test session's own (tests/pg_server.py); fails, never skips,
    where it cannot start (``make test`` installs PostgreSQL first)."""
    try:
        with running_server() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
