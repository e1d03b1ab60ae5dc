"""A bug is not a toolkit failure: an exception raised by the job's own code ends the run with
exit 1 (internal_error) and its traceback; only what fails inside TensorFlow, MCT or another
external tool is exit 5 (toolkit_failure), naming the tool. Real runs of the real job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import JobRun, read_config, write_config

from mctq_job.errors import InternalError, ToolkitError

pytestmark = pytest.mark.slow


def run_with_fault(project: Path, fault: str) -> JobRun:
    """The real command line in a fresh interpreter, after ``fault`` (Python code) changed the job."""
    code = f"{fault}\nfrom mctq_job.cli import main\nmain(['run'], prog_name='mctq-job')\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return JobRun(proc.returncode, proc.stdout, proc.stderr, project)


def no_artifacts(project: Path) -> bool:
    return not any(
        (project / folder).exists() and any((project / folder).iterdir()) for folder in ("output", "evaluate/results")
    )


def test_a_bug_in_the_jobs_code_called_by_mct_is_exit_1_with_its_traceback(project):
    """Calibration batches that point past the image list: the IndexError is raised in the job's
    data generator while MCT calls it, so it is the job's bug, not MCT's failure."""
    fault = (
        "import mctq_job.calibrate as c\n"
        "drawn = c.draw\n"
        "c.draw = lambda n, config: c.Drawn([b + n for b in drawn(n, config).batches], n)\n"
    )
    result = run_with_fault(project, fault)
    assert result.returncode == InternalError.exit_code == 1, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "internal_error" and failed["stage"] == "quantize"
    assert "IndexError" in failed["message"] and "bug in mctq-job" in failed["message"]
    frames = failed["exception"][-1]["frames"]
    assert frames[-1]["filename"].endswith("mctq_job/calibrate.py")
    assert no_artifacts(project)


def test_a_bug_in_a_stage_without_toolkit_calls_is_exit_1(project):
    """report.html's renderer failing is the job's own failure, whatever the exception type."""
    result = run_with_fault(project, "import mctq_job.report_html as r\nr.render = lambda results: 1 / 0\n")
    assert result.returncode == 1, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "internal_error" and failed["stage"] == "report"
    assert "ZeroDivisionError" in failed["message"] and failed["exception"]
    assert no_artifacts(project)


def test_mct_failing_is_exit_5_naming_mct_and_quoting_it(project):
    """A weights-memory target no bit-width mix can reach: MCT itself raises, so the run is a
    toolkit failure (exit 5, retried by Kubernetes), naming MCT and quoting its message."""
    write_config(project, {**read_config(project), "mixed_precision": {"weights_memory_ratio": 0.01}})
    result = run_with_fault(project, "")
    assert result.returncode == ToolkitError.exit_code == 5, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "toolkit_failure" and failed["stage"] == "quantize" and failed["tool"] == "MCT"
    assert "cannot be quantized to meet the specified resource utilization" in failed["message"]
    assert no_artifacts(project)
