"""The worked CI example (examples/ci/): the pipeline refers to real Make targets, files and
variables, and its script really fails on the accuracy gate while keeping every artifact."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT, miscalibrate

from mctq_job import cli
from mctq_job.artifacts import OUTPUT_DIR_FILES, RESULT_DIR_FILES
from mctq_job.errors import AccuracyGateError

WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
SCRIPT = ROOT / "examples" / "ci" / "quantize-and-gate.sh"


def run_lines() -> list[str]:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["quantize"]["steps"]
    return [step["run"] for step in steps if "run" in step]


def test_the_pipeline_uses_make_targets_that_exist():
    targets = {t for line in run_lines() for t in re.findall(r"\bmake ([a-z][\w-]*)", line)}
    assert targets == {"image", "venv"}
    for target in targets:  # a dry run knows every real target and refuses unknown ones
        assert subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True).returncode == 0, target
    assert subprocess.run(["make", "-n", "no-such-target"], cwd=ROOT, capture_output=True).returncode != 0


def test_the_pipeline_refers_to_files_of_this_repository():
    paths = {p for line in run_lines() for p in re.findall(r"(?:\.venv/bin/|\b)((?:examples|scripts)/[\w./-]+)", line)}
    assert paths == {"examples/digits.py", "examples/ci/quantize-and-gate.sh"}
    for path in paths:
        assert (ROOT / path).is_file(), path
    assert os.access(SCRIPT, os.X_OK)


def test_the_script_sets_the_gate_through_the_clis_own_variable():
    (option,) = [p for p in cli.run.params if p.name == "max_top1_drop"]
    assert f"-e {option.envvar}=" in SCRIPT.read_text()
    env = yaml.safe_load(WORKFLOW.read_text())["env"]
    assert 0 < float(env["MAX_TOP1_DROP"]) < 1 and '"$MAX_TOP1_DROP"' in " ".join(run_lines())


def test_the_script_refuses_wrong_usage():
    proc = subprocess.run([str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


@pytest.mark.container
@pytest.mark.slow
def test_the_script_fails_on_the_gate_and_keeps_the_artifacts(digits_template, tmp_path):
    from container_support import docker_client, image_for_tests

    image = image_for_tests(docker_client()).image
    project = tmp_path / "project"
    shutil.copytree(digits_template, project)
    miscalibrate(project)
    proc = subprocess.run(
        [str(SCRIPT), str(project), "0.05"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "IMAGE": image.id},
    )
    assert proc.returncode == AccuracyGateError.exit_code, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED the accuracy gate" in proc.stderr
    log = [json.loads(line) for line in (project / "mctq-job.log").read_text().splitlines()]
    assert (log[-1]["event"], log[-1]["error"]) == ("run.failed", "accuracy_gate_failed")
    assert {p.name for p in (project / "output").iterdir()} == set(OUTPUT_DIR_FILES)
    assert {p.name for p in (project / "evaluate" / "results").iterdir()} == set(RESULT_DIR_FILES)
