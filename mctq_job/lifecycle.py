"""The process around one run of the job: its umask, its private temp folder, SIGINT and
SIGTERM, and how the process ends (exit code, last event, Kubernetes termination message).

One :class:`Process` per ``mctq-job run``; the CLI creates it, the pipeline never sees it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from . import interrupts
from .cleanups import Cleanups
from .errors import Interrupted, MctqError
from .events import Event
from .logs import Logger, state

UMASK_ENV = "MCTQ_UMASK"
TERMINATION_LOG_ENV = "MCTQ_TERMINATION_LOG"
TERMINATION_LOG_DEFAULT = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes
#: After SIGTERM/SIGINT the process ends within this many seconds whatever a clean-up does
#: (``docker stop`` waits 10 s, Kubernetes 30 s before SIGKILL).
INTERRUPT_DEADLINE_S = 8.0


class Process:
    """What one run's process owns beyond the pipeline: its temp folder, the registry of
    clean-ups that the run's child processes, workers and staging area register with (run when
    the run fails or is interrupted), and the single way it exits."""

    def __init__(self, log: Logger):
        self.log = log
        self.cleanups = Cleanups()
        self._tempdirs: list[str] = []
        # Set by the signal watcher before it cleans up; from then on only it may end the process.
        self._interrupting = threading.Event()
        self._signum = 0

    def handle_signals(self) -> None:
        """From now on SIGINT/SIGTERM run the registered clean-ups (child processes, staged
        files), remove the temp folder, report, and exit 130/143, even inside a long C++ call."""
        interrupts.install(self._interrupted)

    @contextlib.contextmanager
    def private_tempdir(self) -> Iterator[Path]:
        """The run's own temp folder, removed afterwards however the run ends. The job's code is
        handed its path (RunContext.temp_dir); it is also made the process's default temp folder
        because TensorFlow leaves files there (autograph's generated code) that must go with it."""
        path = tempfile.mkdtemp(prefix="mctq-job-")
        self._tempdirs.append(path)
        previous, previous_env = tempfile.tempdir, os.environ.get("TMPDIR")
        tempfile.tempdir = path
        os.environ["TMPDIR"] = path
        try:
            yield Path(path)
        finally:
            tempfile.tempdir = previous
            if previous_env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous_env
            shutil.rmtree(path, ignore_errors=True)

    def fail(self, exc: MctqError, **fields: object) -> NoReturn:
        """Report a failed run (with the traceback of the original exception, where one is kept)
        and exit with the error's code."""
        self._yield_to_interrupt()
        _, problems = self.cleanups.run()
        if problems:
            fields["cleanup_errors"] = problems
        original = getattr(exc, "original", None)
        self.log.error(Event.RUN_FAILED.value, message=exc.message, **exc.event_fields(), **fields, exc_info=original)
        termination_message(exc.termination_text())
        exit_now(exc.exit_code)

    def succeed(self, message: str) -> NoReturn:
        self._yield_to_interrupt()
        termination_message(message)
        exit_now(0)

    def _yield_to_interrupt(self) -> None:
        """The main thread stops here while the watcher reports the interruption and exits
        130/143: a failure it caused (its staging area vanished) must not end the run with
        another code. The watcher's deadline ends the process; the wait below is only a fence."""
        if self._interrupting.is_set():
            time.sleep(2 * INTERRUPT_DEADLINE_S)
            exit_now(Interrupted(self._signum).exit_code)

    def _interrupted(self, signum: int) -> NoReturn:
        """Runs on the signal watcher thread: clean up, report, and end the process now. A
        clean-up that raises or blocks cannot keep the process alive: each one's failure is
        reported, and a timer ends the process at INTERRUPT_DEADLINE_S regardless."""
        self._signum = signum
        self._interrupting.set()
        exc = Interrupted(signum)
        # os._exit, not exit_now: a flush could block on the very stream a stuck clean-up holds
        deadline = threading.Timer(INTERRUPT_DEADLINE_S, os._exit, (exc.exit_code,))
        deadline.daemon = True
        deadline.start()
        try:
            removed, problems = self.cleanups.run()
            for path in self._tempdirs:
                shutil.rmtree(path, ignore_errors=True)
            fields: dict[str, object] = {"removed_temporary_files": removed}
            if problems:
                fields["cleanup_errors"] = problems
            self.log.error(Event.RUN_FAILED.value, message=exc.message, **fields, **exc.event_fields())
            termination_message(exc.termination_text())
            self.cleanups.run()  # again: the main thread may still have been writing (MCT's exporter)
        finally:
            exit_now(exc.exit_code)


def apply_umask(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """MCTQ_UMASK (octal, e.g. 002; the image sets it) for the folders and files the job
    creates: group-writable output lets pods of any UID in a shared group share a volume."""
    value = environ.get(UMASK_ENV, "")
    if value:
        try:
            os.umask(int(value, 8) & 0o777)
        except ValueError:
            raise ValueError(f"{UMASK_ENV}={value!r}: expected an octal umask such as 002") from None


def exit_now(code: int) -> NoReturn:
    """End the process once everything is published and said: TensorFlow's interpreter
    teardown would add over a second of nothing to every run."""
    for stream in (state.stream, sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(code)


def termination_message(text: str) -> None:
    """One line for Kubernetes' terminationMessagePath, where that file exists."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG_DEFAULT))
    if not path.exists():
        return
    try:
        path.write_text(text[:TERMINATION_LOG_LIMIT] + "\n", encoding="utf-8")
    except OSError:
        pass  # the message is a courtesy; the JSON event already said it
