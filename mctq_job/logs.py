"""Logging, configured once: structlog renders the job's events as JSON lines (or readable
console lines), and the stdlib bridge turns TensorFlow's, absl's, MCT's and Python's
``warnings`` records into ``library.log`` events through the same processors.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

from .events import Event

LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Loggers of the libraries the job drives; their records become library.log events.
LIBRARY_LOGGERS = ("tensorflow", "absl", "Model Compression Toolkit", "py.warnings", "h5py", "PIL", "matplotlib")
FIRST_KEYS = ("timestamp", "level", "event", "stage")

#: The job's logger type: structlog's bound logger with level filtering.
Logger = FilteringBoundLogger


class _State:
    """What the rest of the package needs to know about the configured stream."""

    format = "json"
    stream: TextIO = sys.stdout
    last_line = time.monotonic()
    lock = threading.Lock()


state = _State()


def _mark_line(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    state.last_line = time.monotonic()
    return event_dict


def _order_keys(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    first = {k: event_dict.pop(k) for k in FIRST_KEYS if k in event_dict}
    first.update(event_dict)
    return first


def _as_library_event(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """Foreign stdlib records: keep their text as ``message`` under one event name."""
    event_dict["message"] = str(event_dict.pop("event", "")).strip()
    event_dict["event"] = Event.LIBRARY_LOG.value
    return event_dict


def _json_dumps(obj: Any, **kw: Any) -> str:
    """ASCII-only JSON: no character inside a line that any reader might take for a line
    break (U+0085, U+2028 from a file name or a label)."""
    kw.setdefault("default", str)
    return json.dumps(obj, ensure_ascii=True, **kw)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _renderer(fmt: str, stream: TextIO) -> list[Processor]:
    if fmt == "json":
        return [
            structlog.processors.dict_tracebacks,
            _order_keys,
            _mark_line,
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
    colors = hasattr(stream, "isatty") and stream.isatty()
    return [_mark_line, structlog.dev.ConsoleRenderer(colors=colors)]


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> Logger:
    """Configure structlog and the stdlib bridge once; return the job's logger."""
    stream = stream or sys.stdout
    state.format, state.stream = fmt, stream
    numeric = getattr(logging, level.upper())
    structlog.configure(
        processors=[*_shared_processors(), *_renderer(fmt, stream)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib(fmt, numeric, stream)
    logger: Logger = structlog.get_logger("mctq_job")
    return logger


def _bridge_stdlib(fmt: str, numeric: int, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_shared_processors(), structlog.stdlib.add_logger_name, _as_library_event],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderer(fmt, stream)],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
        lib.setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)


def quiet_libraries() -> None:
    """Environment that keeps TensorFlow's C++ side and tqdm bars off the streams.
    Must run before TensorFlow or MCT is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
