"""The error hierarchy and the exit-code table: the one source for both.

Stages raise these; only the CLI turns them into a process exit. Each class carries its
``exit_code``; the table in docs/running.md, the Kubernetes podFailurePolicy and the tests all read
:data:`EXIT_CODES` instead of repeating numbers.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitCode:
    code: int
    name: str
    meaning: str
    #: True where running the same job again cannot help (Kubernetes: fail the Job at once).
    permanent: bool


class MctqError(Exception):
    """Base of every error the job reports to its user; never raised itself."""

    exit_code = 1
    kind = "internal_error"

    def __init__(self, message: str, *, problems: list[str] | None = None, **context: object):
        super().__init__(message)
        self.message = message
        self.problems = list(problems or [message])
        self.context = context

    def event_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"error": self.kind, "exit_code": self.exit_code}
        if len(self.problems) > 1:
            fields["problems"] = self.problems
        fields.update(self.context)
        return fields


class ConfigError(MctqError):
    """configuration.json is missing, not JSON, or a key's value is not accepted."""

    exit_code = 3
    kind = "invalid_config"


class InputDataError(MctqError):
    """A model, image or label file named by the configuration cannot be used."""

    exit_code = 4
    kind = "invalid_input"


class ToolkitError(MctqError):
    """TensorFlow, MCT or another external tool failed; the original exception is kept.

    Raised only by :func:`calling`, which wraps each call into such a tool: an exception
    that escapes the job's own code is a bug (exit 1), not a toolkit failure."""

    exit_code = 5
    kind = "toolkit_failure"

    def __init__(self, tool: str, original: BaseException, detail: str | None = None):
        text = detail if detail is not None else _first_line(original)
        message = f"{tool} failed ({type(original).__module__}.{type(original).__name__})"
        message += f": {text}" if text else ""
        super().__init__(message, tool=tool)
        self.tool = tool
        self.original = original


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


#: OSError numbers that mean "this output location cannot take the file", wherever raised.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
#: Where a traceback frame's file lies in the job's own package, the exception is the job's.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def raised_by_the_job(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc``'s traceback is the job's own code (a callback
    of ours that a library called, such as the calibration data generator)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


@contextlib.contextmanager
def calling(tool: str) -> Iterator[None]:
    """Wrap a call into ``tool`` (TensorFlow, MCT, the IMX500 converter): what fails inside it
    becomes a :class:`ToolkitError` naming the tool, unless the failure is the job's own
    (an :class:`MctqError`, or any exception raised in the job's code, which stays a bug)."""
    try:
        yield
    except MctqError:
        raise
    except Exception as exc:
        if raised_by_the_job(exc) or (isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS):
            raise  # a bug of ours, or a full or read-only disk (the caller names the folder)
        raise ToolkitError(tool, exc) from exc


class InternalError(MctqError):
    """A bug in mctq-job itself: an exception raised by the job's own code. The error event
    carries the traceback."""

    exit_code = 1
    kind = "internal_error"

    def __init__(self, original: BaseException):
        super().__init__(
            f"internal error: {type(original).__name__}: {_first_line(original) or '(no message)'}; "
            f"this is a bug in mctq-job, please report it with this event"
        )
        self.original = original


class OutputError(MctqError):
    """An output folder cannot be created or written."""

    exit_code = 6
    kind = "output_not_writable"


class OutputLockedError(MctqError):
    """Another run is writing to the same output folder; this one wrote nothing."""

    exit_code = 7
    kind = "output_locked"


class AccuracyGateError(MctqError):
    """The quantized model lost more top-1 accuracy than ``max_top1_drop`` allows. Raised
    after every artifact is published: the models and results stay for inspection."""

    exit_code = 8
    kind = "accuracy_gate_failed"


class Imx500NotFitError(MctqError):
    """With ``imx500.require_fit``, the converted model does not fit the IMX500's memory. Raised
    after every artifact is published: the package and its memory report stay for inspection."""

    exit_code = 9
    kind = "imx500_not_fit"


class Interrupted(MctqError):
    """SIGINT or SIGTERM arrived; the run stopped and removed its temporary files."""

    kind = "interrupted"

    def __init__(self, signum: int):
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; temporary files removed", signal=name)
        self.exit_code = 128 + signum


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "success", "The job finished; every artifact is written.", False),
    ExitCode(
        InternalError.exit_code,
        InternalError.kind,
        "A bug in mctq-job itself; the error event has the traceback.",
        False,
    ),
    ExitCode(2, "usage_error", "Unknown command or option on the command line.", True),
    ExitCode(
        ConfigError.exit_code,
        ConfigError.kind,
        "configuration.json is missing, malformed, or a value is not accepted.",
        True,
    ),
    ExitCode(
        InputDataError.exit_code,
        InputDataError.kind,
        "The model, an image, the label file or a data folder cannot be used.",
        True,
    ),
    ExitCode(
        ToolkitError.exit_code,
        ToolkitError.kind,
        "TensorFlow, MCT or the IMX500 converter failed (the error event names the tool and the stage).",
        False,
    ),
    ExitCode(
        OutputError.exit_code,
        OutputError.kind,
        "An output folder cannot be created or written (permissions, read-only, full).",
        False,
    ),
    ExitCode(
        OutputLockedError.exit_code,
        OutputLockedError.kind,
        "Another run is writing to the same output folder; this one wrote nothing.",
        False,
    ),
    ExitCode(
        AccuracyGateError.exit_code,
        AccuracyGateError.kind,
        "The top-1 drop exceeded `max_top1_drop`; models, results and report are written all the same.",
        True,
    ),
    ExitCode(
        Imx500NotFitError.exit_code,
        Imx500NotFitError.kind,
        "With `imx500.require_fit`, the packaged model does not fit the IMX500's memory; everything is written all the same.",
        True,
    ),
    ExitCode(130, "interrupted_sigint", "Stopped by SIGINT (Ctrl-C); temporary files removed.", False),
    ExitCode(
        143,
        "interrupted_sigterm",
        "Stopped by SIGTERM (docker stop, Kubernetes eviction); temporary files removed.",
        False,
    ),
)


def exit_code_table_markdown() -> str:
    """The exit-code table of docs/running.md, generated here so it cannot drift."""
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    rows += [f"| {e.code} | `{e.name}` | {e.meaning} |" for e in EXIT_CODES]
    return "\n".join(rows)
