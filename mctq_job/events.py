"""Event names and logging: the one place stdout's JSON-lines stream is defined.

Every line on stdout is one JSON object with ``timestamp`` (ISO-8601, UTC), ``level``,
``event`` (a name from :class:`Event`) and, inside a stage, ``stage``. Python logging from
TensorFlow, absl, MCT and ``warnings`` is routed through the same processors, so it becomes
``library.log`` events instead of free text.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import structlog


class Event(str, enum.Enum):
    RUN_START = "run.start"
    RUN_FINISH = "run.finish"
    RUN_FAILED = "run.failed"
    CONFIG_VALID = "config.valid"
    STAGE_START = "stage.start"
    STAGE_FINISH = "stage.finish"
    PROGRESS = "progress"
    HEARTBEAT = "heartbeat"
    ARTIFACT_WRITTEN = "artifact.written"
    ACCURACY_GATE = "accuracy.gate"
    INPUT_IGNORED = "input.ignored"
    INPUT_SKIPPED = "input.skipped"
    LIBRARY_LOG = "library.log"

    def __str__(self) -> str:
        return self.value


EVENT_MEANINGS: dict[Event, str] = {
    Event.RUN_START: "First line, before TensorFlow is imported: version, config path, pid.",
    Event.RUN_FINISH: "Last line of a successful run: the four top-1 accuracies, artifacts, duration.",
    Event.RUN_FAILED: "Last line of a failed run: `error`, `exit_code`, `message` naming the culprit (and `problems`).",
    Event.CONFIG_VALID: "`validate` found nothing wrong: image, class and label counts.",
    Event.STAGE_START: "A stage begins (`stage`: config, inputs, model, calibrate, quantize, export, evaluate, report).",
    Event.STAGE_FINISH: "A stage ended: `duration_s` and the stage's own summary.",
    Event.PROGRESS: "`current`/`total` `unit`, `percent`, `elapsed_s`, `eta_s` (calibration batches, evaluated images).",
    Event.HEARTBEAT: "Written when nothing else was for 2 s (inside MCT or the converter): `stage_elapsed_s`.",
    Event.ARTIFACT_WRITTEN: "A file was published: `path`, `size`, `sha256`.",
    Event.ACCURACY_GATE: "With `max_top1_drop` set: `passed`, `top_1_drop` (Keras to model_quantized.tflite), `max_top1_drop`.",
    Event.INPUT_IGNORED: "A harmless file was skipped (e.g. a README beside the class folders).",
    Event.INPUT_SKIPPED: "An unreadable image was left out (`on_corrupt_image: skip`): `path`, `reason`.",
    Event.LIBRARY_LOG: "A message from TensorFlow, absl, MCT, Python warnings or native code (`logger`, `message`).",
}


def event_table_markdown() -> str:
    """The README's event table, generated here so it cannot drift."""
    rows = ["| event | meaning |", "| --- | --- |"]
    rows += [f"| `{event.value}` | {EVENT_MEANINGS[event]} |" for event in Event]
    return "\n".join(rows)


LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Loggers of the libraries the job drives; their records become library.log events.
LIBRARY_LOGGERS = ("tensorflow", "absl", "Model Compression Toolkit", "py.warnings", "h5py", "PIL", "matplotlib")
FIRST_KEYS = ("timestamp", "level", "event", "stage")


class _State:
    """What the rest of the package needs to know about the configured stream."""

    format = "json"
    stream: TextIO = sys.stdout
    last_line = time.monotonic()
    lock = threading.Lock()


state = _State()


def _mark_line(_logger: Any, _name: str, event_dict: dict) -> dict:
    state.last_line = time.monotonic()
    return event_dict


def _order_keys(_logger: Any, _name: str, event_dict: dict) -> dict:
    first = {k: event_dict.pop(k) for k in FIRST_KEYS if k in event_dict}
    first.update(event_dict)
    return first


def _as_library_event(_logger: Any, _name: str, event_dict: dict) -> dict:
    """Foreign stdlib records: keep their text as ``message`` under one event name."""
    event_dict["message"] = str(event_dict.pop("event", "")).strip()
    event_dict["event"] = Event.LIBRARY_LOG.value
    return event_dict


def _json_dumps(obj: Any, **kw: Any) -> str:
    """ASCII-only JSON: no character inside a line that any reader might take for a line
    break (U+0085, U+2028 from a file name or a label)."""
    kw.setdefault("default", str)
    return json.dumps(obj, ensure_ascii=True, **kw)


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _renderer(fmt: str, stream: TextIO) -> list:
    if fmt == "json":
        return [structlog.processors.dict_tracebacks, _order_keys, _mark_line,
                structlog.processors.JSONRenderer(serializer=_json_dumps)]
    colors = hasattr(stream, "isatty") and stream.isatty()
    return [_mark_line, structlog.dev.ConsoleRenderer(colors=colors)]


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> structlog.BoundLogger:
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
    return structlog.get_logger("mctq_job")


def _bridge_stdlib(fmt: str, numeric: int, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.add_logger_name, _as_library_event],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderer(fmt, stream)],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
        lib.setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)


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


def quiet_libraries() -> None:
    """Environment that keeps TensorFlow's C++ side and tqdm bars off the streams.
    Must run before TensorFlow or MCT is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")


NATIVE_OUTPUT_LIMIT = 16_000


class native_output:
    """Capture what C++ code writes straight to fd 1 and fd 2 (TensorFlow's MLIR converter,
    the TFLite runtime) and log it as one ``library.log`` event instead of loose text.

    Captured text is logged at debug level, or at error level when the block failed.
    """

    def __init__(self, log: Any):
        self.log = log

    def __enter__(self) -> "native_output":
        import tempfile

        sys.stderr.flush()
        self.capture = tempfile.TemporaryFile()
        self.saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in (1, 2):
            os.dup2(self.capture.fileno(), fd)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        sys.stderr.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.capture.seek(0)
        text = self.capture.read(NATIVE_OUTPUT_LIMIT + 1).decode("utf-8", "replace").strip()
        self.capture.close()
        if text:
            level = self.log.error if exc_type is not None else self.log.debug
            level(Event.LIBRARY_LOG.value, logger="native", message=text[:NATIVE_OUTPUT_LIMIT],
                  truncated=len(text) > NATIVE_OUTPUT_LIMIT)
