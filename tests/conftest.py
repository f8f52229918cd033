"""Marks every test under tests/e2e as ``e2e`` (a few others mark themselves):
``pytest -m "not e2e"`` runs the fast layer."""

from __future__ import annotations

from pathlib import Path

import pytest

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
