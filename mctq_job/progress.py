"""Progress events and the heartbeat that keeps the stream alive inside long library calls.

A person or a log collector must see an update at least every 5 s. Progress events come from loops the
job owns (calibration batches, evaluated images); the heartbeat covers calls it cannot look
into (MCT's quantization, TensorFlow's converter) by emitting an event whenever the stream
has been quiet for ``interval`` seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .events import Event
from .logs import Logger, state

HEARTBEAT_INTERVAL_S = 2.0
PROGRESS_INTERVAL_S = 1.0


class Progress:
    """Counts work done in one stage; in JSON mode emits rate-limited ``progress`` events,
    in console mode draws a tqdm bar on stderr."""

    def __init__(self, log: Logger, stage: str, total: int, unit: str, task: str):
        self.log, self.stage, self.total, self.unit, self.task = log, stage, total, unit, task
        self.current = 0
        self.started = time.monotonic()
        self._last_emit = 0.0
        self._bar = _console_bar(task, total, unit) if state.format == "console" else None
        if self._bar is None:
            self._emit()

    def advance(self, n: int = 1) -> None:
        if self.current >= self.total:
            return  # a second pass over the same work (MCT may read its data twice)
        self.current = min(self.total, self.current + n)
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.current >= self.total or now - self._last_emit >= PROGRESS_INTERVAL_S:
            self._emit()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def fields(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        done = min(self.current, self.total)
        eta = elapsed / done * (self.total - done) if done else None
        return {
            "task": self.task,
            "current": self.current,
            "total": self.total,
            "unit": self.unit,
            "percent": round(100.0 * done / self.total, 1) if self.total else 100.0,
            "elapsed_s": round(elapsed, 2),
            "eta_s": None if eta is None else round(eta, 2),
        }

    def _emit(self) -> None:
        self._last_emit = time.monotonic()
        self.log.info(Event.PROGRESS.value, stage=self.stage, **self.fields())


def _console_bar(task: str, total: int, unit: str) -> Any:
    from tqdm import tqdm  # people's bars; the JSON stream never needs tqdm

    # Drawn on the console stream itself: fd 2 is captured while libraries run.
    # disable=None: no bar where the stream is not a terminal (docker logs, files).
    return tqdm(total=total, desc=task, unit=unit, disable=None, dynamic_ncols=True, file=state.stream)


class Heartbeat:
    """A daemon thread that logs ``heartbeat`` for the current stage whenever no line
    has been written for ``interval`` seconds."""

    def __init__(self, log: Logger, interval: float = HEARTBEAT_INTERVAL_S):
        self.log, self.interval = log, interval
        self.stage: str | None = None
        self.stage_started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mctq-heartbeat", daemon=True)

    def enter(self, stage: str | None) -> None:
        self.stage, self.stage_started = stage, time.monotonic()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval / 4):
            quiet = time.monotonic() - state.last_line
            if quiet >= self.interval:
                elapsed = round(time.monotonic() - self.stage_started, 1)
                where = {"stage": self.stage, "stage_elapsed_s": elapsed} if self.stage else {}
                self.log.info(Event.HEARTBEAT.value, **where)
