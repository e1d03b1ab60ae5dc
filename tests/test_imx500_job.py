"""The IMX500 package through the real job and Sony's real converter: the digits project
packaged in one run, a model too large for the chip under require_fit, a missing converter,
and SIGTERM while the converter runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import needs
import pytest
from conftest import ENTRYPOINT, JobRun, LiveRun, read_config, run_cli, write_config

from mctq_job import artifacts
from mctq_job.errors import ConfigError, Imx500NotFitError, ToolkitError
from mctq_job.imx500 import size_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converter() -> str:
    return needs.imx500_converter()


def packaging(project: Path, **imx500: bool) -> None:
    write_config(project, {**read_config(project), "imx500": {"package": True, **imx500}})


@pytest.fixture(scope="module")
def packaged(converter, digits_template, tmp_path_factory) -> JobRun:
    """The digits project with "imx500": {"package": true}: one real run, inspected by several tests."""
    folder = tmp_path_factory.mktemp("imx500")
    project = folder / "project"
    shutil.copytree(digits_template, project)
    packaging(project)
    recording = folder / "imxconv-recording"  # the real converter, each call's arguments noted first
    recording.write_text(f'#!/bin/sh\necho "$*" >> {folder / "calls.txt"}\nexec {converter} "$@"\n')
    recording.chmod(0o755)
    return run_cli(cwd=project, env={"MCTQ_IMXCONV": str(recording)})


def test_the_converter_is_probed_once_and_run_once(packaged):
    """The inputs stage finds and probes the converter; the imx500 stage uses what it found."""
    calls = (packaged.cwd.parent / "calls.txt").read_text().splitlines()
    assert [call for call in calls if call == "--version"] == ["--version"]
    assert len(calls) == 2, calls


def test_one_run_publishes_the_keras_export_and_the_package(packaged):
    """All artifacts, each listed in the manifest; the zip is valid and the XML parses."""
    assert packaged.returncode == 0, packaged.stdout[-3000:]
    output = packaged.cwd / "output"
    names = set(artifacts.output_dir_files("imx500", imx500_package=True))
    assert {p.name for p in output.iterdir()} == names
    manifest = json.loads((output / artifacts.MANIFEST_FILE).read_text())
    assert {a["name"] for a in manifest["artifacts"]} == names - {artifacts.MANIFEST_FILE} | set(
        artifacts.RESULT_DIR_FILES
    )
    with zipfile.ZipFile(output / artifacts.PACKAGE_FILE) as package:
        assert package.testzip() is None and package.namelist()
    (network,) = ET.parse(output / artifacts.DNN_PARAMS_FILE).getroot().iter("network")
    # the package names the network after the published model, not the staging area's temporary file
    assert network.get("name", "").startswith("model_quantized") and "tmp" not in network.get("name", "")
    assert [e["stage"] for e in packaged.named("stage.finish")].count("imx500") == 1


def test_results_and_report_carry_the_memory_reports_facts(packaged):
    """results.json's imx500 object is the memory report's figures, in bytes; report.html shows them."""
    results = json.loads((packaged.cwd / "evaluate" / "results" / artifacts.RESULTS_FILE).read_text())
    chip = results["imx500"]
    report = json.loads((packaged.cwd / "output" / artifacts.MEMORY_REPORT_FILE).read_text())
    section = report.get("Memory Report", report)
    assert chip["fit_in_chip"] is section["Fit In Chip"] is True
    assert chip["memory_usage"] == section["Memory Usage"]
    assert (
        chip["memory_usage_bytes"]
        == chip["model_memory_bytes"] + chip["runtime_memory_bytes"] + chip["reserved_memory_bytes"]
    )
    assert chip["total_memory_bytes"] == size_bytes(section["Total Memory Available On Chip"]) > 8_000_000
    assert chip["utilization"] == pytest.approx(chip["memory_usage_bytes"] / chip["total_memory_bytes"])
    assert 0 < chip["utilization"] < 1
    assert chip["converter_version"]
    html = (packaged.cwd / "evaluate" / "results" / artifacts.REPORT_FILE).read_text()
    assert "IMX500 package" in html and "fits the IMX500" in html


def test_the_converters_output_becomes_events(packaged):
    """Nothing raw on stdout: every line is JSON, and the converter's lines are library.log events."""
    assert all(line.startswith("{") for line in packaged.lines)
    lines = [e for e in packaged.named("library.log") if e.get("logger") == "imxconv-tf"]
    assert lines and all(e["stage"] == "imx500" for e in lines)


def test_without_a_converter_validate_names_the_key_and_how_to_get_it(project, tmp_path):
    packaging(project)
    result = run_cli("validate", cwd=project, env={"MCTQ_IMXCONV": "", "PATH": "/usr/bin:/bin"})
    assert result.returncode == ConfigError.exit_code
    message = result.events[-1]["message"]
    assert "imx500.package" in message and "make imx500-venv" in message and "licence" in message


def test_the_converter_failing_is_exit_5_naming_it_and_quoting_it(project, converter):
    """A converter that cannot run its back end (here: no shell tools on PATH) fails for real:
    exit 5, the error names the IMX500 converter and quotes its last error line; nothing is published."""
    packaging(project)
    result = run_cli(cwd=project, env={"MCTQ_IMXCONV": converter, "PATH": "/nonexistent"})
    assert result.returncode == ToolkitError.exit_code, result.stdout[-3000:]
    failed = result.events[-1]
    assert failed["error"] == "toolkit_failure" and failed["stage"] == "imx500"
    assert failed["tool"] == "IMX500 converter" and "error code" in failed["message"].lower()
    for folder in (project / "output", project / "evaluate" / "results"):
        assert not folder.exists() or not list(folder.iterdir())


def too_large_project(project: Path) -> None:
    """The digits project with a model of about 10M weights: too large for the IMX500's 8 MB."""
    import tensorflow as tf

    inputs = tf.keras.Input((32, 32, 3))
    x = tf.keras.layers.Flatten()(inputs)
    x = tf.keras.layers.Dense(3200, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax")(x)
    model = tf.keras.Model(inputs, outputs)
    shutil.rmtree(project / "model" / "saved_model")
    model.save(str(project / "model" / "saved_model"))
    packaging(project, require_fit=True)
    write_config(project, {**read_config(project), "iteration_count": 2})


def test_a_model_too_large_for_the_chip_fails_require_fit_and_keeps_everything(project, converter):
    """require_fit: exit 9, outcome in the manifest, every artifact published for inspection."""
    too_large_project(project)
    result = run_cli(cwd=project, env={"MCTQ_IMXCONV": converter}, timeout=1200)
    assert result.returncode == Imx500NotFitError.exit_code, result.stdout[-3000:]
    assert result.events[-1]["error"] == "imx500_not_fit"
    output = project / "output"
    assert {p.name for p in output.iterdir()} == set(artifacts.output_dir_files("imx500", True, fits=False))
    assert json.loads((output / artifacts.MANIFEST_FILE).read_text())["outcome"] == "imx500_not_fit"
    results = json.loads((project / "evaluate" / "results" / artifacts.RESULTS_FILE).read_text())
    assert results["imx500"]["fit_in_chip"] is False and results["imx500"]["utilization"] > 1


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_during_the_converter_stops_it_and_leaves_nothing_partial(project, converter):
    """SIGTERM once the converter runs: exit 143, its whole process group gone, no temporary file."""
    packaging(project)
    with LiveRun([sys.executable, str(ENTRYPOINT)], cwd=project, env={"MCTQ_IMXCONV": converter}) as job:
        job.until(lambda event: event["event"] == "library.log" and event.get("logger") == "imxconv-tf")
        converters = subprocess.run(["pgrep", "-f", converter], capture_output=True, text=True).stdout.split()
        assert converters, "the converter is not running"
        groups = {os.getpgid(int(pid)) for pid in converters}
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish(timeout=60) == 143
        assert job.events[-1]["error"] == "interrupted_sigterm"
    assert not any(_group_alive(group) for group in groups)
    for folder in (project / "output", project / "evaluate" / "results"):
        assert not folder.exists() or not list(folder.iterdir())


@pytest.mark.container
def test_the_imx500_image_packages_a_mounted_project_hardened(digits_template, tmp_path):
    """mctq-job:imx500 with --read-only --tmpfs /tmp --network none --cap-drop ALL and a UID it has
    never seen: the converter runs (nothing to chmod or download at run time) and the package lands."""
    from container_support import (
        DIGEST_LABEL,
        IMX500_CONVERTER_LABEL,
        docker_client,
        image_for_tests,
        imx500_image_for_tests,
        make_group0_writable,
        run_container,
    )

    client = docker_client()
    job_image = image_for_tests(client)
    image = imx500_image_for_tests(client, job_image.image)
    assert image.labels[IMX500_CONVERTER_LABEL] and not image.labels.get(DIGEST_LABEL)  # never taken for the job image
    assert image_for_tests(client).image.id == job_image.image.id
    project = tmp_path / "project"
    shutil.copytree(digits_template, project)
    packaging(project)
    make_group0_writable(project)
    run = run_container(client, image, hardened=True, user="23456:0", mounts={project: "/workspace"}, timeout=1800)
    assert run.exit_code == 0, run.explain()
    names = {p.name for p in (project / "output").iterdir()}
    assert names == set(artifacts.output_dir_files("imx500", imx500_package=True))
    results = json.loads((project / "evaluate" / "results" / artifacts.RESULTS_FILE).read_text())
    assert results["imx500"]["fit_in_chip"] is True
