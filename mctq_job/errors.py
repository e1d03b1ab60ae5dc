"""The error hierarchy and the exit-code table: the one source for both.

Stages raise these; only the CLI turns them into a process exit. Each class carries its
``exit_code``; the table in docs/running.md, the Kubernetes podFailurePolicy and the tests all read
:data:`EXIT_CODES` instead of repeating numbers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import click


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

    def termination_text(self) -> str:
        """The line for Kubernetes' termination message: ``<kind> (exit <code>): <message>``."""
        return f"{self.kind} (exit {self.exit_code}): {self.message}"


def first_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters; "" where it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def numbered(problems: Sequence[str]) -> str:
    """Problems as one sentence: a single one as it is, several as "N problems: (1) ...; (2) ..."."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))


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

    Raised by :func:`calling`, which wraps each call into such a tool: an exception with the
    job's own code on its path (raised by it, or beneath a callback of ours) is a bug (exit 1),
    not a toolkit failure."""

    exit_code = 5
    kind = "toolkit_failure"

    def __init__(self, tool: str, original: BaseException, detail: str | None = None):
        text = detail if detail is not None else first_line(original)
        message = f"{tool} failed ({type(original).__module__}.{type(original).__name__})"
        message += f": {text}" if text else ""
        super().__init__(message, tool=tool)
        self.tool = tool
        self.original = original


class UnsupportedModelError(MctqError):
    """The model has a layer (or an output) the job cannot handle, such as a layer the
    full-integer exporter cannot export; the message names it and what is supported. Running
    the same job again cannot help."""

    exit_code = 10
    kind = "unsupported_model"


#: OSError numbers that mean "this output location cannot take the file", wherever raised.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
#: Where a traceback frame's file lies in the job's own package, the exception is the job's.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _in_package(tb: TracebackType) -> bool:
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


def raised_by_the_job(exc: BaseException) -> bool:
    """True when the job's own code is on the path of ``exc``: raised in our code, or raised
    anywhere beneath a frame of ours that a library called (the calibration data generator that
    MCT calls, and whatever that generator calls in turn, numpy or PIL included).

    ``exc`` is as :func:`calling` catches it: its traceback starts with our frames (``calling``
    itself, the function holding the ``with`` block, any helper of ours it went through) and
    enters the toolkit at the first frame outside the package. It is the toolkit's failure only
    when there is such a frame and no frame of ours comes after it. An explicit ``raise ... from``
    (``__cause__``) is followed, the same rule applied to the cause's own traceback: a toolkit
    that wraps the error of our callback does not make it its own. The implicit ``__context__``
    is not: an exception raised while handling another is no sign that the other caused it."""
    return _ours_beneath(exc.__traceback__, entered=False) or _cause_is_ours(exc)


def _ours_beneath(tb: TracebackType | None, entered: bool) -> bool:
    """Whether a frame of ours follows the first toolkit frame of ``tb`` (``entered``: the
    traceback already starts inside the toolkit); True also where no toolkit frame is met."""
    if tb is None:
        return False
    seen_toolkit = entered
    while tb is not None:
        if not _in_package(tb):
            seen_toolkit = True
        elif seen_toolkit:
            return True
        last = tb
        tb = tb.tb_next
    return _in_package(last)  # raised in our own code, no toolkit frame between


def _cause_is_ours(exc: BaseException) -> bool:
    seen = {id(exc)}
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        # A cause's traceback starts where the toolkit caught it: already inside the toolkit.
        if _ours_beneath(cause.__traceback__, entered=True):
            return True
        cause = cause.__cause__
    return False


@contextlib.contextmanager
def calling(tool: str) -> Iterator[None]:
    """Wrap a call into ``tool`` (TensorFlow, MCT, the IMX500 converter): what fails inside it
    becomes a :class:`ToolkitError` naming the tool, unless the failure is the job's own (an
    :class:`MctqError`, or an exception with our code on its path, :func:`raised_by_the_job`,
    which stays a bug)."""
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
            f"internal error: {type(original).__name__}: {first_line(original) or '(no message)'}; "
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
    """SIGINT or SIGTERM arrived; the run stopped and removed its temporary files. Its kind and
    exit code follow from the signal: ``interrupted_sigterm``, 128 + 15 = 143, as a shell says."""

    def __init__(self, signum: int):
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; temporary files removed", signal=name)
        self.kind = self.kind_for(signum)
        self.exit_code = self.exit_code_for(signum)

    @staticmethod
    def kind_for(signum: int) -> str:
        return f"interrupted_{signal.Signals(signum).name.lower()}"

    @staticmethod
    def exit_code_for(signum: int) -> int:
        return 128 + int(signum)


#: The signals the job handles, with what each means for a run.
INTERRUPTING_SIGNALS: tuple[tuple[signal.Signals, str], ...] = (
    (signal.SIGINT, "Stopped by SIGINT (Ctrl-C); temporary files removed."),
    (signal.SIGTERM, "Stopped by SIGTERM (docker stop, Kubernetes eviction); temporary files removed."),
)


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "success", "The job finished; every artifact is written.", False),
    ExitCode(
        InternalError.exit_code,
        InternalError.kind,
        "A bug in mctq-job itself; the error event has the traceback.",
        False,
    ),
    ExitCode(click.UsageError.exit_code, "usage_error", "Unknown command or option on the command line.", True),
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
    ExitCode(
        UnsupportedModelError.exit_code,
        UnsupportedModelError.kind,
        "The model has a layer the export cannot handle; the error event names it and what is supported.",
        True,
    ),
    *(
        ExitCode(Interrupted.exit_code_for(signum), Interrupted.kind_for(signum), meaning, False)
        for signum, meaning in INTERRUPTING_SIGNALS
    ),
)


def exit_code_table_markdown() -> str:
    """The exit-code table of docs/running.md, generated here so it cannot drift."""
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    rows += [f"| {e.code} | `{e.name}` | {e.meaning} |" for e in EXIT_CODES]
    return "\n".join(rows)
