"""The clean-ups of one run: what must be undone when it fails or is interrupted.

Whatever a run starts that could outlive it (a child process, a worker, a staging area of
half-written files) registers its clean-up here and removes it once it has ended by itself.
The process's signal watcher and its failure path run whatever is registered then, so no
module has to keep a global list of what it started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Cleanup = Callable[[], object]


class Cleanups:
    """A registry of clean-ups, safe to use from any thread (the signal watcher runs it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, Cleanup] = {}
        self._next = 0

    def add(self, cleanup: Cleanup) -> Callable[[], None]:
        """Register ``cleanup``; the function returned unregisters it (call it once the thing
        it cleans up has ended by itself)."""
        with self._lock:
            key, self._next = self._next, self._next + 1
            self._entries[key] = cleanup

        def remove() -> None:
            with self._lock:
                self._entries.pop(key, None)

        return remove

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def run(self) -> tuple[int, list[str]]:
        """Run every registered clean-up, the newest first, each guarded: one that raises is
        reported and the others still run. Returns (temporary files removed, what failed).
        The entries stay registered: running them again is harmless and catches what a still
        running writer created after the first pass."""
        with self._lock:
            entries = list(reversed(self._entries.values()))
        removed, problems = 0, []
        for cleanup in entries:
            try:
                result = cleanup()
            except Exception as error:  # noqa: BLE001 - the process must still end; say what failed
                problems.append(f"{getattr(cleanup, '__qualname__', cleanup)}: {type(error).__name__}: {error}")
                continue
            removed += len(result) if isinstance(result, list) else 0
        return removed, problems
