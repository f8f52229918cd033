from __future__ import annotations

import sys

import pytest

from core.engine import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_thresholds_are_raised_once_per_process() -> None:
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True  # idempotent


def test_releasing_free_memory_is_safe_anywhere() -> None:
    allocator.release_free_memory()
