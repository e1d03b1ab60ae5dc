"""Recovery (issue 18): on the hostile model (a concatenation of a 1-channel branch scaled x1024
with a normal one, compensated after it), MCT's default quantization fails a 5-point gate and the
diagnosis names the concatenation; with ``recover`` the run re-quantizes until it is within the
gate, publishes the winner's files and a recovered_configuration.json that reproduces them; the
budget stops it; SIGTERM during an attempt leaves nothing behind."""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import signal
import sys
from pathlib import Path

import needs
import pytest
from conftest import ENTRYPOINT, JobRun, LiveRun, miscalibrate, read_config, run_cli, write_config
from recovery_support import hostile_model

from mctq_job import qat
from mctq_job.artifacts import RECOVERED_CONFIG_FILE
from mctq_job.errors import AccuracyGateError

pytestmark = pytest.mark.slow
GATE = 0.05
RECOVER = {"max_attempts": 6, "max_seconds": 600}


def output_files(project: Path) -> dict[str, bytes]:
    """Every file in the two output folders, by name (hidden temporary files included)."""
    found = {}
    for folder in (project / "output", project / "evaluate" / "results"):
        if folder.is_dir():
            found.update({p.name: p.read_bytes() for p in folder.iterdir()})
    return found


def opening(page: str) -> str:
    """The report's opening sentence (the verdict paragraph)."""
    match = re.search(r'<p class="verdict[^"]*">(.*?)</p>', page, re.S)
    assert match, "report.html opens with no verdict"
    return match.group(1)


def results_of(files: dict[str, bytes]) -> dict:
    return json.loads(files["results.json"])


@pytest.fixture(scope="module")
def hostile(digits_template, tmp_path_factory) -> Path:
    """The digits project with the hostile model and a 5-point gate (no recover)."""
    dest = tmp_path_factory.mktemp("hostile") / "project"
    shutil.copytree(digits_template, dest)
    hostile_model(dest).save(dest / "model" / "hostile.keras")
    write_config(dest, {**read_config(dest), "source_keras_model": "model/hostile.keras", "max_top1_drop": GATE})
    return dest


def copy_of(hostile: Path, tmp_path: Path, **changes) -> Path:
    dest = tmp_path / "project"
    shutil.copytree(hostile, dest)
    write_config(dest, {**read_config(dest), **changes})
    return dest


@pytest.fixture(scope="module")
def without_recover(hostile, tmp_path_factory) -> tuple[JobRun, dict[str, bytes]]:
    project = copy_of(hostile, tmp_path_factory.mktemp("plain"))
    return run_cli(cwd=project), output_files(project)


@pytest.fixture(scope="module")
def recovered(hostile, tmp_path_factory) -> tuple[JobRun, dict[str, bytes]]:
    """One run with recover; its files as published (a later test runs the recovered
    configuration, which writes to the same folders)."""
    project = copy_of(hostile, tmp_path_factory.mktemp("recovered"), recover=RECOVER)
    return run_cli(cwd=project), output_files(project)


def test_without_recover_the_gate_fails_and_the_diagnosis_names_the_concatenation(without_recover):
    run, files = without_recover
    assert run.returncode == AccuracyGateError.exit_code, run.stdout[-3000:]
    results = results_of(files)
    assert results["gate"]["top_1_drop"] >= 0.05  # default PTQ loses at least 5 points
    assert results["top_1_accuracy_keras"] - results["top_1_accuracy_keras_quantized"] >= 0.05
    (finding,) = [f for f in results["diagnosis"]["findings"] if f["kind"] == "unbalanced_concatenation"]
    assert finding["layer"] == "concat" and finding["evidence"]["smallest_input"] == "branch_small"
    assert results["recovery"] is None and RECOVERED_CONFIG_FILE not in files
    assert "recover" not in {e.get("stage") for e in run.named("stage.start")}
    page = html.unescape(files["report.html"].decode())
    assert "unbalanced_concatenation" in page
    # the report opens with the verdict, which names the concatenation
    assert "the diagnosis points at layer 'concat' (unbalanced concatenation)." in opening(page)


def test_with_recover_the_run_passes_the_gate_within_its_budget(recovered, without_recover):
    run, files = recovered
    assert run.returncode == 0, run.stdout[-3000:]
    results = results_of(files)
    recovery = results["recovery"]
    attempts = recovery["attempts"]
    assert results["gate"]["passed"] and recovery["stopped"] == "within_budget"
    assert recovery["winner"] == attempts[-1]["attempt"] == len(attempts)
    assert [a["outcome"] for a in attempts][-1] == "within_budget"
    assert all(a["outcome"] != "within_budget" for a in attempts[:-1])
    assert recovery["seconds"] <= RECOVER["max_seconds"] and len(attempts) <= RECOVER["max_attempts"]
    # the baseline is the run without recover, the winner's figures are the published ones
    plain = results_of(without_recover[1])
    assert recovery["baseline_top_1"] == plain["top_1_accuracy_tflite_quantized"]
    assert recovery["reference_top_1"] == results["top_1_accuracy_keras"] == plain["top_1_accuracy_keras"]
    won = attempts[-1]
    assert won["top_1"] == results["top_1_accuracy_tflite_quantized"]
    assert won["keras_quantized_top_1"] == results["top_1_accuracy_keras_quantized"]
    assert won["top_1_drop"] == results["gate"]["top_1_drop"] <= GATE
    assert won["subset_top_1"] is not None and 0 < won["seconds"] <= recovery["seconds"]
    assert won["reason"].startswith("unbalanced_concatenation at 'concat'")
    # the same operators as the configuration's own export (this model's BatchNormalization after the
    # concatenation stays float in both: the full-integer export's limit, not recovery's)
    assert results["models"]["tflite_quantized"]["census"] == plain["models"]["tflite_quantized"]["census"]
    # every attempt is an event, and its stages ran again carrying its number
    assert [e["attempt"] for e in run.named("recover.attempt")] == [a["attempt"] for a in attempts]
    again = [(e["stage"], e["attempt"]) for e in run.named("stage.start") if "attempt" in e]
    assert ("quantize", len(attempts)) in again and ("export", len(attempts)) in again
    # the winner's settings are in results.json and in recovered_configuration.json
    recovered_config = json.loads(files[RECOVERED_CONFIG_FILE])
    for key, value in won["change"].items():
        expected = {**recovered_config[key], **value} if isinstance(value, dict) else value
        assert recovered_config[key] == expected
    assert results["quantization"]["activations"] == recovered_config["activations"]
    assert recovered_config["recover"] == {**RECOVER, "max_seconds": float(RECOVER["max_seconds"])}
    # published whole: the manifest lists every file with its digest, no temporary file is left
    manifest = json.loads(files["manifest.json"])
    assert RECOVERED_CONFIG_FILE in {record["name"] for record in manifest["artifacts"]}
    for record in manifest["artifacts"]:
        assert hashlib.sha256(files[record["name"]]).hexdigest() == record["sha256"], record["name"]
    assert not [name for name in files if name.startswith(".")]
    assert manifest["stage_seconds"]["recover"] > 0 and manifest["outcome"] == "success"
    page = files["report.html"].decode()
    assert "<h2>Recovery</h2>" in page and f"{won['attempt']} (published)" in page
    # the report opens with what the configuration as given cost and what recovery did about it
    assert '<p class="verdict recovered">' in page
    sentence = opening(html.unescape(page))
    assert "the diagnosis points at 'concat' (unbalanced concatenation)" in sentence
    assert f"Recovery attempt {won['attempt']}, {won['description']}, brought it to" in sentence


def test_the_recovered_configuration_reproduces_the_same_files(recovered):
    run, files = recovered
    assert run.returncode == 0
    config = Path(json.loads(files["manifest.json"])["config"]["output_dir"]) / RECOVERED_CONFIG_FILE
    again = run_cli("--config", str(config), cwd=config.parent)
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.named("recover.attempt") == []  # the recovered settings pass the gate at once
    now = output_files(config.parent.parent)
    for name in ("model_quantized.tflite", "model.tflite"):
        assert hashlib.sha256(now[name]).hexdigest() == hashlib.sha256(files[name]).hexdigest(), name
    assert results_of(now)["recovery"] is None
    assert results_of(now)["top_1_accuracy_tflite_quantized"] == results_of(files)["top_1_accuracy_tflite_quantized"]


def test_max_attempts_stops_recovery_and_the_gate_fails_with_the_best_attempts_figures(project):
    """Calibrated on grey images, no setting recovers the model: one attempt, then exit 8 with
    the configuration's own models published and the attempt's figures in results.json and the log."""
    miscalibrate(project)
    write_config(project, {**read_config(project), "max_top1_drop": 0.02, "recover": {"max_attempts": 1}})
    run = run_cli(cwd=project)
    assert run.returncode == AccuracyGateError.exit_code, run.stdout[-3000:]
    files = output_files(project)
    results = results_of(files)
    recovery = results["recovery"]
    (attempt,) = recovery["attempts"]
    assert recovery["stopped"] == "max_attempts" and recovery["winner"] is None and recovery["best"] == 1
    assert attempt["outcome"] in ("over_budget", "rejected_on_subset")
    assert results["top_1_accuracy_tflite_quantized"] == recovery["baseline_top_1"]  # the configuration's own
    assert RECOVERED_CONFIG_FILE not in files and not [name for name in files if name.startswith(".")]
    failed = run.events[-1]
    assert failed["event"] == "run.failed" and failed["exit_code"] == AccuracyGateError.exit_code
    assert "recovery made 1 attempt(s)" in failed["message"] and "(max_attempts)" in failed["message"]
    # grey images straight in the calibration folder are no labelled training data: no QAT
    assert {"fix": "quantization-aware training", "reason": qat.UNLABELLED} in recovery["not_tried"]
    assert f"the best was attempt 1, {attempt['description']}" in failed["message"]
    page = html.unescape(files["report.html"].decode())
    assert "No attempt was within the gate" in page
    assert "Recovery tried 1 fix" in opening(page) and "none within the gate" in opening(page)


def test_max_seconds_stops_recovery_before_an_attempt_that_would_not_fit(hostile, tmp_path):
    project = copy_of(hostile, tmp_path, recover={"max_seconds": 1})
    run = run_cli(cwd=project)
    assert run.returncode == AccuracyGateError.exit_code, run.stdout[-3000:]
    files = output_files(project)
    recovery = results_of(files)["recovery"]
    assert recovery["attempts"] == [] and recovery["stopped"] == "max_seconds" and recovery["best"] is None
    assert "No attempt fitted the time budget" in files["report.html"].decode()
    (stopped,) = run.named("recover.stopped")
    assert stopped["stopped"] == "max_seconds" and "(max_seconds)" in run.events[-1]["message"]


def test_16_bit_activations_are_measured_but_never_published(digits_template, tmp_path):
    """Where no 8-bit setting helps (a smooth big branch: nothing to clip), the 16-bit attempt at
    the concatenation is measured on MCT's Keras model and reported as IMX500-only; the run
    still fails the gate, its own files published."""
    project = tmp_path / "project"
    shutil.copytree(digits_template, project)
    hostile_model(project, smooth_big_branch=True).save(project / "model" / "smooth.keras")
    config = {"source_keras_model": "model/smooth.keras", "max_top1_drop": GATE, "recover": {"max_attempts": 3}}
    write_config(project, {**read_config(project), **config})
    run = run_cli(cwd=project)
    assert run.returncode == AccuracyGateError.exit_code, run.stdout[-3000:]
    files = output_files(project)
    recovery = results_of(files)["recovery"]
    outcomes = [(a["change"], a["activation_bits"], a["outcome"]) for a in recovery["attempts"]]
    assert outcomes[:2] == [
        ({"activations": {"z_threshold": 4.0}}, None, "rejected_on_subset"),
        ({"activations": {"error_method": "mae"}}, None, "rejected_on_subset"),
    ]
    sixteen = recovery["attempts"][2]
    assert sixteen["activation_bits"] == {"concat": 16} and sixteen["outcome"] == "imx500_only"
    assert sixteen["change"] == {"target_platform_version": "4.0"}
    assert sixteen["top_1_drop"] is not None and sixteen["top_1_drop"] <= GATE  # 16 bits rescue it on the IMX500
    assert recovery["winner"] is None and recovery["best"] in (1, 2) and recovery["stopped"] == "max_attempts"
    assert RECOVERED_CONFIG_FILE not in files
    assert "on the IMX500 only (not as TFLite), attempt 3" in run.events[-1]["message"]


@pytest.mark.parametrize("stage", ["quantize", "export"])
def test_sigterm_during_an_attempt_leaves_the_previous_files_and_nothing_else(
    hostile, without_recover, tmp_path, stage
):
    project = copy_of(hostile, tmp_path, recover=RECOVER)
    previous = without_recover[1]
    for name, data in previous.items():  # a complete earlier run's files
        folder = project / ("evaluate/results" if name in ("results.json", "report.html") else "output")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with LiveRun([sys.executable, str(ENTRYPOINT)], cwd=project) as job:
        job.until(lambda e: e["event"] == "stage.start" and e.get("stage") == stage and e.get("attempt") == 1)
        job.proc.send_signal(signal.SIGTERM)
        code = job.finish(timeout=120)
    assert code == 128 + signal.SIGTERM
    assert job.events[-1]["event"] == "run.failed" and job.events[-1]["error"] == "interrupted_sigterm"
    assert output_files(project) == previous  # no attempt's file, no temporary file


def test_candidates_follow_the_findings_and_skip_what_changes_nothing(tmp_path):
    from test_config import AITRIOS, write

    from mctq_job import config as config_mod
    from mctq_job import recover, results
    from mctq_job.diagnose import Finding

    assert recover.ATTEMPT_OUTCOMES == results.ATTEMPT_OUTCOMES and recover.STOPS == results.RECOVERY_STOPS
    config = config_mod.load(write(tmp_path, {**AITRIOS, "max_top1_drop": 0.02, "recover": {}}))
    concat = Finding("unbalanced_concatenation", "concat", {}, "")
    found = recover.candidates(config, [concat], calibration_images=10_000)
    assert [(c.change, c.activation_bits) for c in found] == [
        ({"activations": {"z_threshold": 4.0}}, None),
        ({"activations": {"error_method": "mae"}}, None),
        ({"target_platform_version": "4.0"}, {"concat": 16}),
        ({"iteration_count": config.iteration_count * 4}, None),
        ({"quantization_method": "gptq"}, None),
    ]
    assert all("unbalanced_concatenation at 'concat'" in c.reason for c in found[:3])
    plain = recover.candidates(config, [], calibration_images=config.batch_size * config.iteration_count)
    assert [c.change for c in plain] == [{"activations": {"error_method": "mae"}}, {"quantization_method": "gptq"}]
    tuned = config_mod.load(
        write(
            tmp_path,
            {
                **AITRIOS,
                "target_platform": "tflite",
                "activations": {"z_threshold": 4},
                "max_top1_drop": 0.02,
                "recover": {},
            },
        )
    )
    assert [c.change for c in recover.candidates(tuned, [concat], 0)] == [
        {"activations": {"error_method": "mae"}},  # z_threshold 4 is set already; no 16 bits off the imx500
        {"quantization_method": "gptq"},
    ]


def test_with_the_imx500_package_the_winner_is_converted_again_and_published(hostile, tmp_path):
    """With imx500.package, every attempt re-runs Sony's real converter on its own Keras export:
    the published package is the winner's, converted, and its fit facts are in results.json."""
    converter = needs.imx500_converter()
    project = copy_of(hostile, tmp_path, recover=RECOVER, imx500={"package": True})
    run = run_cli(cwd=project, env={"MCTQ_IMXCONV": converter})
    assert run.returncode == 0, run.stdout[-3000:]
    files = output_files(project)
    results = results_of(files)
    recovery = results["recovery"]
    assert recovery["winner"] is not None and results["gate"]["passed"]
    converted = [e.get("attempt") for e in run.named("stage.finish") if e.get("stage") == "imx500"]
    assert converted == [None, recovery["winner"]]  # the configuration's own, then the winner's
    assert results["imx500"]["fit_in_chip"] is True
    manifest = json.loads(files["manifest.json"])
    published = {record["name"]: record["sha256"] for record in manifest["artifacts"]}
    assert {"packerOut.zip", "dnnParams.xml", RECOVERED_CONFIG_FILE} <= set(published)
    assert hashlib.sha256(files["packerOut.zip"]).hexdigest() == published["packerOut.zip"]
    assert json.loads(files[RECOVERED_CONFIG_FILE])["imx500"]["package"] is True


def test_qat_is_offered_last_and_only_with_labelled_calibration_images(tmp_path):
    """QAT comes after every PTQ fix, only where the calibration images sit in class folders
    named like the label file's (labelled training data); otherwise recovery.not_tried says why."""
    from test_config import AITRIOS, write

    from mctq_job import config as config_mod
    from mctq_job import qat, recover
    from mctq_job.diagnose import Finding

    config = config_mod.load(write(tmp_path, {**AITRIOS, "max_top1_drop": 0.02, "recover": {}}))
    concat = Finding("unbalanced_concatenation", "concat", {}, "")
    unlabelled = recover.candidates(config, [concat], 10_000, labelled=False)
    labelled = recover.candidates(config, [concat], 10_000, labelled=True)
    assert [c.change for c in labelled[:-1]] == [c.change for c in unlabelled]
    assert labelled[-1].change == {
        "quantization_method": "qat",
        "gptq": None,
        "qat": {"epochs": 2, "learning_rate": 0.001, "images": 1024},
    }
    assert recover.configured(config, labelled[-1].change).qat_options() == config_mod.Qat()
    assert recover.not_offered(config, labelled=True) == []
    assert recover.not_offered(config, labelled=False) == [(recover.QAT_FIX, qat.UNLABELLED)]
    # from GPTQ, the attempt drops GPTQ's options; a configuration on QAT already is not offered it again
    gptq = config_mod.load(
        write(
            tmp_path,
            {**AITRIOS, "quantization_method": "gptq", "gptq": {"epochs": 1}, "max_top1_drop": 0.02, "recover": {}},
        )
    )
    assert recover.configured(gptq, recover.candidates(gptq, [], 0, labelled=True)[-1].change).gptq is None
    on_qat = config_mod.load(
        write(tmp_path, {**AITRIOS, "quantization_method": "qat", "max_top1_drop": 0.02, "recover": {}})
    )
    assert all(c.change.get("quantization_method") != "qat" for c in recover.candidates(on_qat, [], 0, labelled=True))
    assert recover.not_offered(on_qat, labelled=True)[0][1] == "the configuration quantizes with it already"
    # which images count as labelled: every one in a folder named like a class of the label file
    root = tmp_path / "calibration"
    labels = {"cat": 0, "dog": 1}
    assert qat.labels_of(root, [root / "dog" / "a" / "1.png", root / "cat" / "2.png"], labels) == [1, 0]
    assert qat.labels_of(root, [root / "dog" / "1.png", root / "3.png"], labels) is None
    assert qat.labels_of(root, [root / "dog" / "1.png", root / "bird" / "4.png"], labels) is None
    # QAT's time estimate grows with its epochs and the images it trains on
    assert recover.expected_seconds(labelled[-1], 10.0, 6.0) == 10.0 * (1 + 2 * 6.0 / 4)


def test_where_no_ptq_fix_helps_qat_on_the_labelled_calibration_images_wins_and_reproduces(digits_template, tmp_path):
    """The smooth hostile model (no 8-bit PTQ setting recovers it; 16 bits are IMX500-only): the
    last candidate, QAT on the calibration images (the digits project's class folders), brings it
    within the gate; its file is fully integer and the recovered configuration gives the same bytes."""
    project = tmp_path / "project"
    shutil.copytree(digits_template, project)
    hostile_model(project, smooth_big_branch=True).save(project / "model" / "smooth.keras")
    config = {"source_keras_model": "model/smooth.keras", "max_top1_drop": GATE, "recover": {"max_seconds": 900}}
    write_config(project, {**read_config(project), **config})
    run = run_cli(cwd=project, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:]
    files = output_files(project)
    results = results_of(files)
    recovery = results["recovery"]
    won = recovery["attempts"][-1]
    assert won["change"]["quantization_method"] == "qat" and won["outcome"] == "within_budget"
    assert all(a["change"].get("quantization_method") != "qat" for a in recovery["attempts"][:-1])
    assert "quantization-aware training" not in {n["fix"] for n in recovery["not_tried"]}
    assert results["quantization"]["method"] == "qat" and results["gate"]["passed"]
    # within_budget implies the census check: as integer as the configuration's own (this model's
    # BatchNormalization after the concatenation stays float for PTQ too, the export's limit)
    assert [e["attempt"] for e in run.named("quantize.epoch")] == [won["attempt"]] * 2
    recovered_config = json.loads(files[RECOVERED_CONFIG_FILE])
    assert recovered_config["quantization_method"] == "qat" and recovered_config["qat"] == won["change"]["qat"]
    again = run_cli("--config", str(project / "output" / RECOVERED_CONFIG_FILE), cwd=project / "output")
    assert again.returncode == 0 and again.named("recover.attempt") == [], again.stdout[-3000:]
    now = output_files(project)
    assert now["model_quantized.tflite"] == files["model_quantized.tflite"]
