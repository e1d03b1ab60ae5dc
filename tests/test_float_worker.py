"""model.tflite converted in a worker process beside the quantized export: the same bytes as
the in-process conversion, published the same way, and no worker outlives an interrupted run."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import LiveRun, is_stage_start

pytestmark = pytest.mark.slow

WORKER_ALWAYS = "import mctq_job.float_worker as w\nw.WORKER_MIN_PARAMETERS = 0\n"


def test_the_worker_converts_to_the_same_bytes_as_the_job_itself(project, tmp_path):
    """Same model file in, byte-identical model.tflite out, and the worker is gone afterwards."""
    import tensorflow as tf

    from mctq_job import export, float_worker
    from mctq_job.cleanups import Cleanups

    model_path = project / "model" / "saved_model"
    cleanups = Cleanups()
    conversion = float_worker.FloatConversion(model_path, tmp_path / "native.txt", cleanups)
    assert len(cleanups) == 1  # its stop() is registered while it runs
    in_process = export.convert_float(tf.keras.models.load_model(str(model_path), compile=False))
    assert conversion.result() == in_process
    assert not conversion.process.is_alive() and conversion.process.exitcode == 0
    assert len(cleanups) == 0


def test_a_worker_that_fails_is_a_toolkit_failure_naming_the_converter(tmp_path):
    """No model at the path: the worker reports TensorFlow's error, raised as exit 5 for the converter."""
    from mctq_job import float_worker
    from mctq_job.cleanups import Cleanups
    from mctq_job.errors import ToolkitError

    conversion = float_worker.FloatConversion(tmp_path / "missing", tmp_path / "native.txt", Cleanups())
    with pytest.raises(ToolkitError) as failure:
        conversion.result()
    assert failure.value.tool == float_worker.TOOL and "missing" in failure.value.message


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def test_sigterm_while_the_worker_runs_leaves_no_worker_and_no_file(project):
    """Interrupted during the export with the worker converting: exit 143, the worker ended too."""
    code = WORKER_ALWAYS + "from mctq_job.cli import main\nmain(['run'], prog_name='mctq-job')\n"
    with LiveRun([sys.executable, "-c", code], cwd=project) as job:
        job.until(is_stage_start("export"))
        deadline = time.monotonic() + 30
        while not (workers := _children(job.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers, "no worker process was started"
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish(timeout=60) == 143
        assert job.events[-1]["error"] == "interrupted_sigterm"
    time.sleep(0.5)
    assert not [
        pid
        for pid in workers
        if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    ]
    for folder in (project / "output", project / "evaluate" / "results"):
        assert not folder.exists() or not list(folder.iterdir())
