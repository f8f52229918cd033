"""Peak RSS sampling of a process tree via /proc (no psutil)."""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Self


def read_rss_kb(pid: int) -> int:
    """Return VmRSS of pid in kB, or 0 if the process is gone or has no RSS line."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _parent_map() -> dict[int, int]:
    """Map every visible pid to its parent pid."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
            # The comm field may contain spaces/parentheses; ppid follows the last ')'.
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return parents


def process_tree(pid: int) -> list[int]:
    """Return pid followed by all of its live descendants."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_map().items():
        children.setdefault(parent, []).append(child)
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def tree_rss_kb(pid: int) -> int:
    """Return the summed VmRSS (kB) of pid and its descendants."""
    return sum(read_rss_kb(p) for p in process_tree(pid))


class RssSampler:
    """Sample the RSS of a process tree in a background thread and keep the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.pid))
            if self._stop.wait(self.interval):
                return

    @property
    def peak_mb(self) -> float:
        """Peak RSS observed so far, in MiB."""
        return self.peak_kb / 1024.0

    def start(self) -> Self:
        """Start sampling in the background."""
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling and return the peak RSS in MiB."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.peak_mb

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
