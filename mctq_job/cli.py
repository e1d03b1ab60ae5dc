"""The command line: ``run`` (the default), ``validate``, ``schema``, ``version``.

Parses options, sets up logging once and calls the pipeline; the process around a run
(signals, temp folder, exit) is :mod:`mctq_job.lifecycle`'s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config_file import DEFAULT_CONFIG_NAME
from .errors import AccuracyGateError, InternalError, MctqError
from .events import Event
from .logs import LOG_FORMATS, LOG_LEVELS


class _RunByDefault(click.Group):
    """``mctq-job [OPTIONS]`` means ``mctq-job run [OPTIONS]``, as the container's plain
    ``docker run`` does."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


#: The options every job command takes: (declarations, settings), each also read from its variable.
_JOB_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("--config", "config_path"),
        {
            "type": click.Path(path_type=Path),
            "default": DEFAULT_CONFIG_NAME,
            "envvar": "MCTQ_CONFIG",
            "help": "configuration.json; relative paths inside it resolve against its folder.",
        },
    ),
    (
        ("--log-format",),
        {
            "type": click.Choice(LOG_FORMATS),
            "default": "json",
            "envvar": "MCTQ_LOG_FORMAT",
            "help": "json: one JSON event per stdout line; console: readable lines and bars.",
        },
    ),
    (
        ("--log-level",),
        {
            "type": click.Choice(LOG_LEVELS, case_sensitive=False),
            "default": "info",
            "envvar": "MCTQ_LOG_LEVEL",
            "help": "Least severe level written.",
        },
    ),
)


def _job_options(command: Any) -> Any:
    for declarations, settings in reversed(_JOB_OPTIONS):
        command = click.option(*declarations, show_default=True, show_envvar=True, **settings)(command)
    return command


@click.group(cls=_RunByDefault, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Quantize a Keras image classifier with MCT, export TFLite models and measure the
    top-1 accuracy of all of them, driven by configuration.json.

    Without a command, runs the job ('run').
    """


@main.command()
@_job_options
@click.option(
    "--max-top1-drop",
    type=click.FloatRange(0, 1),
    default=None,
    envvar="MCTQ_MAX_TOP1_DROP",
    show_envvar=True,
    help="Accuracy gate: largest allowed top-1 drop from the Keras model to "
    "model_quantized.tflite, as a fraction (0.02 = 2 points); overrides the "
    "configuration's max_top1_drop. When exceeded, everything is written and "
    f"the run exits {AccuracyGateError.exit_code}.",
)
def run(config_path: Path, log_format: str, log_level: str, max_top1_drop: float | None) -> None:
    """Run the whole job (the default command)."""
    from . import capture, lifecycle, logs

    stream = capture.guard_stdout()
    try:
        lifecycle.apply_umask()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    logs.quiet_libraries()
    log = logs.configure(log_format, log_level.lower(), stream)
    log.info(
        Event.RUN_START.value, command="run", version=__version__, config=str(config_path.absolute()), pid=os.getpid()
    )
    process = lifecycle.Process(log)
    process.handle_signals()
    began = time.monotonic()
    try:
        from . import pipeline
        from .context import RunContext
        from .progress import Heartbeat

        overrides = {"max_top1_drop": max_top1_drop} if max_top1_drop is not None else None
        with process.private_tempdir() as temp_dir, Heartbeat(log) as heartbeat:
            ctx = RunContext(log, temp_dir, process.cleanups, heartbeat)
            result = pipeline.run(ctx, config_path, overrides)
    except MctqError as exc:
        process.fail(exc)
    except Exception as exc:  # noqa: BLE001 - a bug of ours, whatever it is: say so, keep the traceback
        process.fail(InternalError(exc))
    accuracy = result.results.headline()
    log.info(
        Event.RUN_FINISH.value,
        outcome="success",
        exit_code=0,
        duration_s=round(time.monotonic() - began, 2),
        artifacts=[str(p) for p in result.published],
        **accuracy,
    )
    process.succeed(
        "success: "
        + ", ".join(
            f"{k.removeprefix('top_1_accuracy_')}={'n/a' if v is None else format(v, '.4f')}"
            for k, v in accuracy.items()
        )
    )


@main.command()
@_job_options
def validate(config_path: Path, log_format: str, log_level: str) -> None:
    """Check configuration.json and everything it names, without TensorFlow."""
    import tempfile

    from . import logs, pipeline
    from .context import RunContext

    log = logs.configure(log_format, log_level.lower())
    try:
        checked = pipeline.validate(RunContext(log, Path(tempfile.gettempdir())), config_path)
    except MctqError as exc:
        from .lifecycle import termination_message

        log.error(Event.RUN_FAILED.value, message=exc.message, command="validate", **exc.event_fields())
        termination_message(exc.termination_text())
        sys.exit(exc.exit_code)
    log.info(Event.CONFIG_VALID.value, config=str(config_path), exit_code=0, **checked.summary())


@main.command()
@click.option("--results", "document", flag_value="results", help="results.json's schema instead.")
@click.option("--manifest", "document", flag_value="manifest", help="manifest.json's schema instead.")
def schema(document: str | None) -> None:
    """Print the JSON Schema of configuration.json (or of results.json, manifest.json)."""
    if document is None:
        from .config import json_schema

        click.echo(json.dumps(json_schema(), indent=2))
        return
    from . import results

    click.echo(json.dumps(results.json_schema(results.SCHEMAS[document]), indent=2))


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

    click.echo(
        json.dumps(
            {
                "mctq_job": __version__,
                "python": platform.python_version(),
                "tensorflow": installed("tensorflow-cpu", "tensorflow"),
                "model_compression_toolkit": installed("model-compression-toolkit"),
                "numpy": installed("numpy"),
            }
        )
    )
