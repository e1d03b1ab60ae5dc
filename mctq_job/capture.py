"""File-descriptor capture: keeps fd 1 for JSON lines only, and turns what C++ code writes
straight to fd 1 and fd 2 into ``library.log`` events.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from .events import Event
from .logs import Logger


def guard_stdout() -> TextIO:
    """Keep fd 1 for JSON lines only: whatever else writes to stdout (C++ libraries,
    print calls) is sent to stderr, and the returned stream writes to the real stdout."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stdout  # not a real file (tests capture it in memory): nothing to guard
    sys.stdout.flush()
    json_fd = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    sys.stdout = sys.stderr
    return os.fdopen(json_fd, "w", buffering=1, encoding="utf-8")


NATIVE_OUTPUT_LIMIT = 16_000


class native_output:
    """Capture what C++ code writes straight to fd 1 and fd 2 (TensorFlow's MLIR converter,
    the TFLite runtime) and log it as one ``library.log`` event instead of loose text.

    Captured text is logged at debug level, or at error level when the block failed.
    """

    def __init__(self, log: Logger):
        self.log = log

    def __enter__(self) -> native_output:
        import tempfile

        sys.stderr.flush()
        self.capture = tempfile.TemporaryFile()
        self.saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in (1, 2):
            os.dup2(self.capture.fileno(), fd)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        sys.stderr.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.capture.seek(0)
        text = self.capture.read(NATIVE_OUTPUT_LIMIT + 1).decode("utf-8", "replace").strip()
        self.capture.close()
        if text:
            level = self.log.error if exc_type is not None else self.log.debug
            level(
                Event.LIBRARY_LOG.value,
                logger="native",
                message=text[:NATIVE_OUTPUT_LIMIT],
                truncated=len(text) > NATIVE_OUTPUT_LIMIT,
            )
