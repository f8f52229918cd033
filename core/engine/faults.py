"""Fault injection for tests: make the engine fail on purpose. Off unless asked for.

Set the environment variable ``INFERMCP_FAULTS`` before the server starts, as comma-separated
``name=value`` pairs:

``step_error_at=N``
    the N-th engine step (counting from 1, per chat model) raises ``MemoryError`` (standing in
    for an out-of-memory error on the device); the engine then fails every request in flight
    and refuses new ones, as it would for a real failure.

Nothing reads the variable but :func:`from_env`, which the model loader calls once per engine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

ENV = "INFERMCP_FAULTS"
log = logging.getLogger("infermcp.engine")


@dataclass
class Faults:
    """The faults one engine injects, and the count of steps taken so far."""

    step_error_at: int | None = None
    num_steps: int = 0

    def before_step(self) -> None:
        """Called by the engine thread before each step; raises when a fault is due."""
        self.num_steps += 1
        if self.num_steps == self.step_error_at:
            raise MemoryError(f"injected fault: step {self.num_steps} failed ({ENV})")


def from_env(environ: dict[str, str] | None = None) -> Faults | None:
    """The faults ``INFERMCP_FAULTS`` asks for, or None (the normal case)."""
    spec = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not spec:
        return None
    faults = Faults()
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name.strip() != "step_error_at" or not value.strip().isdigit():
            raise ValueError(f"{ENV}: unknown fault {item!r}; expected step_error_at=N")
        faults.step_error_at = int(value)
    log.warning("fault injection is on: %s=%s", ENV, spec)
    return faults
