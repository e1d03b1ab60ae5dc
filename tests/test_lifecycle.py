"""SIGTERM handling of the job's process (mctq_job.lifecycle): whatever its clean-ups do, the
process reports the interruption and ends with 128 + the signal number, in bounded time.

These run the real signal watcher in a small child process (no TensorFlow), with clean-ups
that fail or block the way a half-imported module or a stuck child process would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mctq_job import lifecycle
from mctq_job.cleanups import Cleanups
from mctq_job.errors import Interrupted

SCRIPT = """
import sys, threading, time
from pathlib import Path
from mctq_job import lifecycle, logs
from mctq_job.errors import MctqError

log = logs.configure("json", "info", sys.stdout)
process = lifecycle.Process(log)
marker = Path(sys.argv[2])

def raises():
    raise AttributeError("module 'mctq_job.float_worker' has no attribute 'stop_all'")

def blocks():
    threading.Event().wait()

def later():
    marker.write_text("ran")
    return [marker]

first = {"raises": raises, "blocks": blocks}[sys.argv[1]]
process.cleanups.add(later)
process.cleanups.add(first)  # the newest runs first
process.handle_signals()
print('{"event": "ready"}', flush=True)
if sys.argv[3] == "fail":  # the main thread fails because of the interruption, as a real stage does
    while not process._interrupting.is_set():
        time.sleep(0.01)
    process.fail(MctqError("its staging area vanished"))
while True:
    time.sleep(1)
"""


def interrupt(tmp_path: Path, cleanup: str, main_thread: str) -> tuple[int, list[dict], Path]:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), cleanup, str(marker), main_thread],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=4 * lifecycle.INTERRUPT_DEADLINE_S)
    finally:
        proc.kill()
        proc.stdout.close()
    return proc.returncode, [json.loads(line) for line in out.splitlines()], marker


@pytest.mark.parametrize("main_thread", ["sleeps", "fail"])
def test_a_failing_cleanup_is_reported_and_the_others_still_run(tmp_path, main_thread):
    code, events, marker = interrupt(tmp_path, "raises", main_thread)
    assert code == Interrupted(signal.SIGTERM).exit_code == 143
    last = events[-1]
    assert last["event"] == "run.failed" and last["error"] == "interrupted_sigterm"
    assert len(last["cleanup_errors"]) == 1 and "has no attribute 'stop_all'" in last["cleanup_errors"][0]
    assert marker.read_text() == "ran" and last["removed_temporary_files"] == 1


def test_a_blocking_cleanup_cannot_keep_the_process_alive(tmp_path):
    code, events, marker = interrupt(tmp_path, "blocks", "sleeps")
    assert code == 143
    assert not marker.exists()  # the later clean-up never came: the deadline ended the process
    assert all(e["event"] != "run.failed" for e in events)


def test_cleanups_run_newest_first_and_only_while_registered():
    """What registered a clean-up and ended by itself removes it; the rest run newest first,
    each guarded, and may run again (a second pass after a late writer)."""
    cleanups = Cleanups()
    ran: list[str] = []
    cleanups.add(lambda: ran.append("staging") or [Path("a"), Path("b")])
    done = cleanups.add(lambda: ran.append("finished worker"))
    cleanups.add(lambda: ran.append("converter"))
    done()
    assert cleanups.run() == (2, []) and ran == ["converter", "staging"]
    assert cleanups.run() == (2, []) and ran == ["converter", "staging"] * 2


def test_the_documented_deadline_is_the_code_s():
    running = (Path(__file__).resolve().parent.parent / "docs" / "running.md").read_text()
    assert f"at most {lifecycle.INTERRUPT_DEADLINE_S:g} seconds after the signal" in " ".join(running.split())


def test_the_reported_peak_memory_is_the_jobs_own_not_its_parents():
    """Started by a process holding 600 MB (a notebook, a bench), the job reports its own peak:
    Linux's ru_maxrss would carry the parent's 600 MB across fork and exec."""
    parent = textwrap.dedent("""
        import subprocess, sys
        held = bytearray(600 * 2**20)
        held[::4096] = b"x" * len(held[::4096])  # resident, not only reserved
        child = "from mctq_job.context import peak_memory_bytes; print(peak_memory_bytes())"
        print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)
    """)
    reported = int(
        subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True, timeout=60).stdout
    )
    assert 5 * 2**20 < reported < 300 * 2**20
