"""The command line: ``run`` (the default), ``validate``, ``schema``, ``version``.

The only place that sets up logging, turns errors into exit codes and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, NoReturn

import click

from . import __version__
from .errors import MctqError
from .events import LOG_FORMATS, LOG_LEVELS, Event

TERMINATION_LOG_ENV = "MCTQ_TERMINATION_LOG"
TERMINATION_LOG_DEFAULT = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes


class _RunByDefault(click.Group):
    """``mctq-job [OPTIONS]`` means ``mctq-job run [OPTIONS]``, as the container's plain
    ``docker run`` does."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _job_options(command: Any) -> Any:
    command = click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info",
                           envvar="MCTQ_LOG_LEVEL", show_default=True, show_envvar=True,
                           help="Least severe level written.")(command)
    command = click.option("--log-format", type=click.Choice(LOG_FORMATS), default="json",
                           envvar="MCTQ_LOG_FORMAT", show_default=True, show_envvar=True,
                           help="json: one JSON event per stdout line; console: readable lines and bars.")(command)
    command = click.option("--config", "config_path", type=click.Path(path_type=Path), default="configuration.json",
                           envvar="MCTQ_CONFIG", show_default=True, show_envvar=True,
                           help="configuration.json; relative paths inside it resolve against its folder.")(command)
    return command


@click.group(cls=_RunByDefault, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Quantize a Keras image classifier with MCT, export TFLite models and measure the
    top-1 accuracy of all of them, driven by configuration.json.

    Without a command, runs the job ('run').
    """


@main.command()
@_job_options
@click.option("--max-top1-drop", type=click.FloatRange(0, 1), default=None, envvar="MCTQ_MAX_TOP1_DROP",
              show_envvar=True, help="Accuracy gate: largest allowed top-1 drop from the Keras model to "
                                     "model_quantized.tflite, as a fraction (0.02 = 2 points); overrides the "
                                     "configuration's max_top1_drop. When exceeded, everything is written and "
                                     "the run exits 8.")
def run(config_path: Path, log_format: str, log_level: str, max_top1_drop: float | None) -> None:
    """Run the whole job (the default command)."""
    from . import events, interrupts

    stream = events.guard_stdout()
    _apply_umask()
    events.quiet_libraries()
    log = events.configure(log_format, log_level.lower(), stream)
    log.info(Event.RUN_START.value, command="run", version=__version__, config=str(config_path.absolute()),
             pid=os.getpid())
    interrupts.install(lambda signum: _interrupted(log, signum))
    began = time.monotonic()
    try:
        from . import pipeline

        with _private_tempdir():
            result = pipeline.run(config_path, log, max_top1_drop)
    except MctqError as exc:
        _fail(log, exc)
    except Exception as exc:  # a bug of ours: say so, keep the traceback
        _fail(log, MctqError(f"internal error: {type(exc).__name__}: {exc}"), exc_info=exc)
    _yield_to_interrupt()
    accuracy = {k: v for k, v in result.results.items() if k.startswith("top_1_accuracy_")}
    log.info(Event.RUN_FINISH.value, outcome="success", exit_code=0, duration_s=round(time.monotonic() - began, 2),
             artifacts=[str(p) for p in result.published], **accuracy)
    _termination_message("success: " + ", ".join(f"{k.removeprefix('top_1_accuracy_')}={v:.4f}"
                                                  for k, v in accuracy.items()))
    _exit_now(0)


def _exit_now(code: int) -> NoReturn:
    """End the process once everything is published and said: TensorFlow's interpreter
    teardown would add over a second of nothing to every run."""
    from .events import state

    for stream in (state.stream, sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(code)


@main.command()
@_job_options
def validate(config_path: Path, log_format: str, log_level: str) -> None:
    """Check configuration.json and everything it names, without TensorFlow."""
    from . import events, pipeline

    log = events.configure(log_format, log_level.lower())
    try:
        checked = pipeline.validate(config_path, log)
    except MctqError as exc:
        _fail(log, exc, command="validate")
    log.info(Event.CONFIG_VALID.value, config=str(config_path), exit_code=0, **checked.summary())


@main.command()
def schema() -> None:
    """Print the JSON Schema of configuration.json."""
    from .config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
def version() -> None:
    """Print the versions of mctq-job, Python, TensorFlow and MCT as JSON."""
    import platform
    from importlib import metadata

    def installed(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    click.echo(json.dumps({
        "mctq_job": __version__, "python": platform.python_version(),
        "tensorflow": installed("tensorflow-cpu", "tensorflow"),
        "model_compression_toolkit": installed("model-compression-toolkit"),
        "numpy": installed("numpy"),
    }))


UMASK_ENV = "MCTQ_UMASK"


def _apply_umask() -> None:
    """MCTQ_UMASK (octal, e.g. 002; the image sets it) for the folders and files the job
    creates: group-writable output lets pods of any UID in a shared group share a volume."""
    value = os.environ.get(UMASK_ENV, "")
    if value:
        try:
            os.umask(int(value, 8) & 0o777)
        except ValueError:
            raise click.BadParameter(f"{UMASK_ENV}={value!r}: expected an octal umask such as 002") from None


_tempdirs: list[str] = []
# Set by the signal watcher before it cleans up; from then on only it may end the process.
_interrupting = threading.Event()


def _yield_to_interrupt() -> None:
    """The main thread stops here while the watcher reports the interruption and exits 130/143:
    a failure it caused (its staging area vanished) must not end the run with another code."""
    if _interrupting.is_set():
        while True:
            time.sleep(60)


@contextlib.contextmanager
def _private_tempdir() -> Iterator[None]:
    """TensorFlow leaves files (autograph's generated code) in the temp folder: give the run
    its own, removed afterwards however the run ends."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="mctq-job-")
    _tempdirs.append(path)
    previous = tempfile.tempdir
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    try:
        yield
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(path, ignore_errors=True)


def _fail(log: Any, exc: MctqError, exc_info: BaseException | None = None, **fields: Any) -> NoReturn:
    from . import artifacts

    _yield_to_interrupt()
    artifacts.abort_all()
    original = getattr(exc, "original", None)
    log.error(Event.RUN_FAILED.value, message=exc.message, **exc.event_fields(), **fields,
              exc_info=exc_info or original)
    _termination_message(f"{exc.kind} (exit {exc.exit_code}): {exc.message}")
    sys.exit(exc.exit_code)


def _interrupted(log: Any, signum: int) -> NoReturn:
    """Runs on the signal watcher thread: clean up, report, and end the process now."""
    from . import artifacts
    from .errors import Interrupted

    import shutil

    _interrupting.set()
    removed = artifacts.abort_all()
    for path in _tempdirs:
        shutil.rmtree(path, ignore_errors=True)
    exc = Interrupted(signum)
    log.error(Event.RUN_FAILED.value, message=exc.message, removed_temporary_files=len(removed),
              **exc.event_fields())
    _termination_message(f"{exc.kind} (exit {exc.exit_code}): {exc.message}")
    _exit_now(exc.exit_code)


def _termination_message(text: str) -> None:
    """One line for Kubernetes' terminationMessagePath, where that file exists."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG_DEFAULT))
    if not path.exists():
        return
    try:
        path.write_text(text[:TERMINATION_LOG_LIMIT] + "\n", encoding="utf-8")
    except OSError:
        pass  # the message is a courtesy; the JSON event already said it
