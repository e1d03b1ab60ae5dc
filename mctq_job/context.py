"""The context of one run: what every stage is handed besides the values it needs.

A :class:`RunContext` owns the logger, the run's private temp folder, the registry of
clean-ups (child processes, workers and the staging area register there; the signal watcher
and the failure path run it), the staging of artifacts with the mapping of disk errors, and
the timing of stages. A stage is a function ``run(ctx, <values>) -> <value>``; the pipeline
calls it through :meth:`RunContext.stage`, which emits ``stage.start`` and ``stage.finish``,
binds the stage's name into every event, and tells a bug of the job's own (exit 1) from the
failures the stages already named. A stage may run more than once in a run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import resource
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog

from . import artifacts
from .capture import native_output
from .cleanups import Cleanups
from .errors import OUTPUT_ERRNOS, InternalError, MctqError, OutputError
from .events import Event, Stage
from .logs import Logger
from .progress import Heartbeat

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class RunContext:
    log: Logger
    temp_dir: Path
    cleanups: Cleanups = field(default_factory=Cleanups)
    heartbeat: Heartbeat | None = None
    #: Seconds of each stage's last run, by stage name (manifest.json's stage_seconds).
    seconds: dict[str, float] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: now())
    #: Where artifacts are staged: set while :meth:`publishing` holds the output folders.
    staging: artifacts.Staging | None = None

    def stage(self, name: Stage, **announced: Any) -> StageCall:
        """``ctx.stage(Stage.X, what=...).run(module.run, values...)``: run one stage;
        ``announced`` goes into its ``stage.start`` event."""
        return StageCall(self, name, announced)

    def temp_folder(self, prefix: str) -> Path:
        """A new folder inside the run's private temp folder (removed with it)."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.temp_dir))

    @contextlib.contextmanager
    def publishing(self, *folders: Path) -> Iterator[artifacts.Staging]:
        """Create and lock the output folders, and stage artifacts in them: what is not
        committed when the block ends (a stage failed) is removed, and so it is when the
        process is interrupted meanwhile."""
        for folder in folders:
            with output_errors(folder):
                artifacts.ensure_folder(folder)
        with artifacts.locked_folders(folders):
            staging = artifacts.Staging(uuid.uuid4().hex[:12])
            unregister = self.cleanups.add(staging.abort)
            self.staging = staging
            try:
                yield staging
            finally:
                if staging.pending:  # not committed: a stage failed
                    staging.abort()
                unregister()
                self.staging = None

    def write(self, final: Path, data: bytes) -> Path:
        """Stage ``data`` for publication as ``final``; a full or read-only disk is an
        OutputError naming the folder."""
        with output_errors(final.parent):
            return self.require_staging().write_bytes(final, data)

    def require_staging(self) -> artifacts.Staging:
        if self.staging is None:
            raise RuntimeError("artifacts can be staged only inside RunContext.publishing()")
        return self.staging

    def skip_logger(self, found: list[tuple[Path, str]] | None = None) -> Callable[[Path, str], None]:
        """The ``on_skip`` callback of decoding loops: an ``input.skipped`` event for each image
        left out (``on_corrupt_image: skip``), also appended to ``found`` where given."""

        def skip(path: Path, reason: str) -> None:
            if found is not None:
                found.append((path, reason))
            self.log.warning(Event.INPUT_SKIPPED.value, path=str(path), reason=reason)

        return skip


@dataclass(frozen=True)
class StageCall:
    ctx: RunContext
    name: Stage
    announced: dict[str, Any]

    def run(self, function: Callable[Concatenate[RunContext, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function(ctx, *args, **kwargs)`` as this stage: its value's ``summary()`` (where
        it has one) goes into ``stage.finish``."""
        ctx, name = self.ctx, self.name
        outer = ctx.heartbeat.stage if ctx.heartbeat else None  # a stage run inside another (recover's attempts)
        if ctx.heartbeat:
            ctx.heartbeat.enter(name)
        ctx.log.info(Event.STAGE_START.value, stage=name.value, **self.announced)
        began = time.perf_counter()
        try:
            with structlog.contextvars.bound_contextvars(stage=name.value), native_output(ctx.log):
                value = function(ctx, *args, **kwargs)
        except MctqError as exc:
            exc.context.setdefault("stage", name.value)
            raise
        except Exception as exc:
            error = InternalError(exc)
            error.context["stage"] = name.value
            raise error from exc
        finally:
            if ctx.heartbeat:
                ctx.heartbeat.enter(outer)
        ctx.seconds[name.value] = round(time.perf_counter() - began, 3)
        summary = value.summary() if hasattr(value, "summary") else {}
        ctx.log.info(
            Event.STAGE_FINISH.value,
            stage=name.value,
            duration_s=ctx.seconds[name.value],
            peak_memory_bytes=peak_memory_bytes(),
            **summary,
        )
        return value


@contextlib.contextmanager
def output_errors(folder: Path) -> Iterator[None]:
    """A full disk or a read-only folder, wherever it surfaces, becomes an OutputError naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        raise OutputError(
            f"cannot write in {folder}: {exc.strerror}; expected a writable folder with free space", folder=str(folder)
        ) from exc


def peak_memory_bytes() -> int:
    """The process's peak resident memory so far: VmHWM of /proc/self/status. Not ru_maxrss:
    Linux carries the parent's peak into it across fork and exec, so a job started by a
    large process (a notebook, a bench) would report that process's memory as its own."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
