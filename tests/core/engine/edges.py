"""The edges of the shared sampling spec, for the tests of the engine and both front ends."""

from __future__ import annotations

from core.engine.params import LIMITS

INTEGER_FIELDS = {"top_k", "max_tokens", "min_tokens", "top_logprobs", "n"}


def edges() -> list[tuple[str, float, float]]:
    """(field, a value the spec admits, the nearest value past that bound) for every bound of
    every field in :data:`core.engine.params.LIMITS`."""
    cases = []
    for name, limits in LIMITS.items():
        step = 1 if name in INTEGER_FIELDS else 0.01
        if limits.ge is not None:
            cases.append((name, limits.ge, limits.ge - step))
        if limits.gt is not None:
            cases.append((name, limits.gt + step, limits.gt))
        if limits.le is not None:
            cases.append((name, limits.le, limits.le + step))
    return cases
