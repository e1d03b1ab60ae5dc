"""The error hierarchy and the exit-code table: the one source for both.

Stages raise these; only the CLI turns them into a process exit. Each class carries its
``exit_code``; the README table, the Kubernetes podFailurePolicy and the tests all read
:data:`EXIT_CODES` instead of repeating numbers.
"""

from __future__ import annotations

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


class StageError(MctqError):
    """TensorFlow or MCT failed inside a stage; the original exception is kept."""

    exit_code = 5
    kind = "toolkit_failure"

    def __init__(self, stage: str, original: BaseException):
        detail = str(original).strip().splitlines()[0] if str(original).strip() else ""
        message = f"{stage} failed in {type(original).__module__}.{type(original).__name__}"
        message += f": {detail}" if detail else ""
        super().__init__(message, stage=stage)
        self.stage = stage
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
    ExitCode(1, "internal_error", "A bug in mctq-job itself; the error event has the traceback.", False),
    ExitCode(2, "usage_error", "Unknown command or option on the command line.", True),
    ExitCode(ConfigError.exit_code, ConfigError.kind, "configuration.json is missing, malformed, or a value is not accepted.", True),
    ExitCode(InputDataError.exit_code, InputDataError.kind, "The model, an image, the label file or a data folder cannot be used.", True),
    ExitCode(StageError.exit_code, StageError.kind, "TensorFlow or MCT failed inside a stage (named in the error event).", False),
    ExitCode(OutputError.exit_code, OutputError.kind, "An output folder cannot be created or written (permissions, read-only, full).", False),
    ExitCode(OutputLockedError.exit_code, OutputLockedError.kind, "Another run is writing to the same output folder; this one wrote nothing.", False),
    ExitCode(AccuracyGateError.exit_code, AccuracyGateError.kind, "The top-1 drop exceeded `max_top1_drop`; models, results and report are written all the same.", True),
    ExitCode(130, "interrupted_sigint", "Stopped by SIGINT (Ctrl-C); temporary files removed.", False),
    ExitCode(143, "interrupted_sigterm", "Stopped by SIGTERM (docker stop, Kubernetes eviction); temporary files removed.", False),
)


def exit_code_table_markdown() -> str:
    """The README's exit-code table, generated here so it cannot drift."""
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    rows += [f"| {e.code} | `{e.name}` | {e.meaning} |" for e in EXIT_CODES]
    return "\n".join(rows)
