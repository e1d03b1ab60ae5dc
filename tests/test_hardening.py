"""Faults and interruptions never lose data or leave a mess: one clear message, a documented
exit code, and output folders holding either the previous artifacts or complete new ones."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ENTRYPOINT, JobRun, LiveRun, is_stage_start, read_config, run_cli, write_config

from mctq_job.artifacts import ARTIFACT_NAMES
from mctq_job.errors import EXIT_CODES, InputDataError, Interrupted, OutputError, OutputLockedError

pytestmark = pytest.mark.slow
SIGTERM_EXIT = 128 + signal.SIGTERM
FINAL_NAMES = set(ARTIFACT_NAMES)


def output_files(project: Path) -> dict[str, bytes]:
    """Every file in the two output folders, by name (hidden temporary files included)."""
    found = {}
    for folder in (project / "output", project / "evaluate" / "results"):
        if folder.is_dir():
            found.update({p.name: p.read_bytes() for p in folder.iterdir()})
    return found


def truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def first_eval_image(project: Path) -> Path:
    return sorted((project / "dataset" / "validation").rglob("*.jpg"))[0]


# --- corrupt images: decided behaviour ------------------------------------------------------


def test_zero_byte_image_fails_before_any_heavy_work_naming_the_file(project):
    victim = first_eval_image(project)
    victim.write_bytes(b"")
    result = run_cli(cwd=project)
    assert result.returncode == InputDataError.exit_code
    message = result.events[-1]["message"]
    assert f"{victim} is empty (0 bytes)" in message and '"on_corrupt_image": "skip"' in message
    assert "model" not in {e.get("stage") for e in result.named("stage.start")}  # TensorFlow never loaded
    assert output_files(project) == {}


def test_truncated_evaluation_jpeg_fails_naming_the_file_and_leaves_nothing(project):
    victim = first_eval_image(project)
    truncate(victim)
    result = run_cli(cwd=project)
    assert result.returncode == InputDataError.exit_code
    assert f"cannot decode image {victim}" in result.events[-1]["message"]
    assert result.events[-1]["stage"] == "evaluate"
    assert output_files(project) == {}


def test_truncated_calibration_png_fails_inside_quantization_naming_the_file(project):
    cfg = read_config(project)
    write_config(project, {**cfg, "batch_size": 140, "iteration_count": 4})  # every image is drawn
    victim = sorted((project / "dataset" / "training").rglob("*.png"))[0]
    truncate(victim, keep=100)
    result = run_cli(cwd=project)
    assert result.returncode == InputDataError.exit_code
    assert f"cannot decode image {victim}" in result.events[-1]["message"]
    assert output_files(project) == {}


def test_skip_mode_leaves_corrupt_images_out_and_lists_them(project):
    cfg = read_config(project)
    write_config(project, {**cfg, "on_corrupt_image": "skip", "batch_size": 140, "iteration_count": 4})
    truncated, empty = first_eval_image(project), sorted((project / "dataset" / "validation").rglob("*.jpg"))[-1]
    truncate(truncated)
    empty.write_bytes(b"")
    calibration_victim = sorted((project / "dataset" / "training").rglob("*.png"))[0]
    truncate(calibration_victim, keep=100)
    result = run_cli(cwd=project)
    assert result.returncode == 0, result.stdout[-2000:]
    skipped_events = {e["path"] for e in result.named("input.skipped")}
    assert skipped_events == {str(truncated), str(empty), str(calibration_victim)}
    results = json.loads((project / "evaluate" / "results" / "results.json").read_text())
    assert results["image_count"] == 138
    assert {s["path"] for s in results["skipped_images"]} == skipped_events


# --- interruptions -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def previous_artifacts(finished_run: JobRun) -> dict[str, bytes]:
    assert finished_run.returncode == 0
    return output_files(finished_run.cwd)


def seed_previous(project: Path, previous: dict[str, bytes]) -> None:
    for name, data in previous.items():
        folder = project / ("evaluate/results" if name == "results.json" else "output")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


MOMENTS = {
    "calibration": lambda e: e["event"] == "progress" and e.get("task") == "calibration" and e["current"] >= 1,
    "quantization": lambda e: (
        e["event"] == "progress" and e.get("task") == "calibration" and e["current"] == e["total"]
    ),
    "export": lambda e: e["event"] == "stage.start" and e["stage"] == "export",
    "evaluation": lambda e: e["event"] == "progress" and e.get("task") == "evaluation" and e["current"] > 0,
    "writing": lambda e: e["event"] == "stage.start" and e["stage"] == "report",
}


def stop_when(project: Path, moment) -> tuple[int, list[dict]]:
    with LiveRun([sys.executable, str(ENTRYPOINT)], cwd=project) as job:
        job.until(moment)
        job.proc.send_signal(signal.SIGTERM)
        return job.finish(timeout=120), job.events


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigterm_at_any_moment_keeps_old_artifacts_or_publishes_a_complete_set(project, previous_artifacts, moment):
    seed_previous(project, previous_artifacts)
    code, events = stop_when(project, MOMENTS[moment])
    after = output_files(project)
    assert set(after) == FINAL_NAMES  # no temporary file left, nothing missing
    if code == 0:  # the signal came after the last artifact was published: a whole new set
        assert moment == "writing" and events[-1]["event"] == "run.finish"
    else:
        assert code == SIGTERM_EXIT and Interrupted(signal.SIGTERM).exit_code == SIGTERM_EXIT
        assert events[-1]["event"] == "run.failed" and events[-1]["error"] == "interrupted_sigterm"
    manifest = json.loads(after["manifest.json"])
    if after == previous_artifacts:
        return
    assert moment == "writing"  # only a publication in progress may replace files, and only whole
    for record in manifest["artifacts"]:
        assert hashlib.sha256(after[record["name"]]).hexdigest() == record["sha256"]


def test_rerun_after_an_interruption_succeeds(project):
    code, _ = stop_when(project, MOMENTS["export"])
    assert code == SIGTERM_EXIT
    result = run_cli(cwd=project)
    assert result.returncode == 0
    assert set(output_files(project)) == FINAL_NAMES


# --- volumes -----------------------------------------------------------------------------


@contextmanager
def mounted(target: Path, *options: str, source: str = "tmpfs"):
    target.mkdir(parents=True, exist_ok=True)
    args = ["mount", *options, source, str(target)] if source == "tmpfs" else ["mount", *options, source, str(target)]
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", *options, "tmpfs", str(target)] if source == "tmpfs" else args,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"mount failed in CI: {proc.stderr}")
        pytest.skip(f"cannot mount here (needs root): {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.mark.parametrize("size_kb,culprit", [(700, "our own write of model.tflite"), (200, "MCT's exporter")])
def test_output_filesystem_filling_up_mid_write(project, size_kb, culprit):
    with mounted(project / "output", "-o", f"size={size_kb}k"):
        result = run_cli(cwd=project)
        assert result.returncode == OutputError.exit_code, (culprit, result.events[-1])
        last = result.events[-1]
        assert str(project / "output") in last["message"] and "No space left on device" in last["message"]
        assert list((project / "output").iterdir()) == []
    assert not (project / "evaluate" / "results" / "results.json").exists()


def test_read_only_output_folder_is_refused_before_any_work(project):
    (project / "output").mkdir()
    with mounted(project / "output", "-o", "ro,size=1m"):
        result = run_cli(cwd=project)
        assert result.returncode == OutputError.exit_code
        assert f"folder {project / 'output'} cannot be written" in result.events[-1]["message"]
        assert "model" not in {e.get("stage") for e in result.named("stage.start")}


def test_second_run_on_the_same_output_folder_refuses_cleanly(project, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns("output", "evaluate"))
    cfg = read_config(other)
    write_config(
        other,
        {**cfg, "output_dir": str(project / "output"), "evaluate_result_dir": str(project / "evaluate" / "results")},
    )
    with LiveRun([sys.executable, str(ENTRYPOINT)], cwd=project) as first:
        first.until(is_stage_start("model"))  # the lock is taken after inputs
        second = run_cli(cwd=other)
        assert second.returncode == OutputLockedError.exit_code
        assert "another mctq-job run is writing to" in second.events[-1]["message"]
        assert first.finish(timeout=300) == 0
    assert set(output_files(project)) == FINAL_NAMES


# --- determinism -------------------------------------------------------------------------


def test_same_inputs_and_seed_give_byte_identical_models_and_accuracies(finished_run: JobRun, project):
    result = run_cli(cwd=project)
    assert result.returncode == 0
    first, second = output_files(finished_run.cwd), output_files(project)
    for name in ("model.tflite", "model_quantized.tflite"):
        assert first[name] == second[name], name
    a, b = json.loads(first["results.json"]), json.loads(second["results.json"])
    for doc in (a, b):
        assert doc["volatile_fields"] == [
            "models.*.inference",
            "models.*.latency",
            "diagnosis.seconds",
            "recovery.seconds",
            "recovery.attempts.*.seconds",
        ]
        for model in doc["models"].values():
            for volatile in ("inference", "latency", "file"):  # file: the two projects' folders differ
                model.pop(volatile)
        doc["diagnosis"].pop("seconds")  # every SQNR and finding must be the same
    assert a == b
    manifest = json.loads(second["manifest.json"])
    assert {"run_id", "started_at", "finished_at", "stage_seconds", "peak_memory_bytes"} <= set(
        manifest["volatile_fields"]
    )


def test_every_exit_code_in_the_table_is_distinct_and_one_a_process_can_mean():
    """Codes below 126 are the job's own; 126 and 127 are the shell's (cannot execute, not
    found); above 128 a code means 128 + the signal that ended the process, and its row must
    name that signal."""
    codes = [e.code for e in EXIT_CODES]
    assert len(codes) == len(set(codes))
    for row in EXIT_CODES:
        if row.code > 128:
            assert row.name.endswith(signal.Signals(row.code - 128).name.lower()), row
        else:
            assert 0 <= row.code < 126, row
