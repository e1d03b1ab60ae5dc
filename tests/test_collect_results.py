"""k8s/collect_results.py, run as its users run it: on a folder of run outputs given as an
argument, or piped into `python -` as in the loader pod, its table and exit status read."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from results_support import evaluation, run_values

from mctq_job import artifacts, report
from mctq_job.config import Config
from mctq_job.results import DETECTION_KEYS, MODELS, NOTEBOOK_KEYS, Gate

#: The report's input comes from the real producer: a real TFLite file's census, the evaluate
#: stage's own types (TensorFlow).
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "k8s" / "collect_results.py"
LABELS = np.repeat(np.arange(10), 14)
#: What makes a configuration a detection run's.
DETECTION_SETTINGS = {
    "task": "detection",
    "evaluate_annotation_file": "/p/instances.json",
    "preprocessing": {"resize": "letterbox"},
}


@pytest.fixture(scope="module")
def template() -> report.RunValues:
    """The report's input as a run hands it over: every document below is made by the producer."""
    return run_values(evaluation(LABELS, {}), {f"class_{i}": i for i in range(10)})


def write_run(
    root: Path,
    name: str,
    accuracy: float,
    template: report.RunValues,
    *,
    platform: str = "imx500",
    batches: int = 10,
    gate: Gate | None = None,
    detection: dict[str, float] | None = None,
) -> None:
    """A run's output as the job leaves it: <name>/evaluation/results.json, and
    <name>/model/manifest.json recording results.json's SHA-256, both made by mctq_job.report.
    With ``detection`` (results.json's mAP keys), a detection run's: its configuration has
    task detection, its results.json the mAP keys in place of the top-1 ones."""
    settings = {"target_platform": platform, "iteration_count": batches, "batch_size": 16}
    if detection is not None:
        settings |= DETECTION_SETTINGS
    config = Config.model_validate({**template.config.to_document(), **settings})
    if detection is None:
        headline = {f"top_1_accuracy_{m}": accuracy - 0.01 * i for i, m in enumerate(MODELS)}
    else:
        headline = {key: None for key in NOTEBOOK_KEYS} | detection | {"task": "detection", "agreement": None}
    results = report.results(template).model_copy(update={**headline, "target_platform": platform, "gate": gate})
    results_file = root / name / "evaluation" / "results.json"
    results_file.parent.mkdir(parents=True)
    results_file.write_bytes(artifacts.json_bytes(results.document()))
    manifest = report.manifest(
        run_id=name,
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:04.000Z",
        config_file=f"/config/{name}.json",
        config_doc=config.to_document(),
        config_sha256=config.digest(),
        versions={"mctq_job": "0.1.0", "tensorflow": "2.15.1", "numpy": "1.26.4", "model_compression_toolkit": "2.6.1"},
        stage_seconds={"quantize": 2.0, "evaluate": 1.5},
        peak_memory_bytes=700 * 2**20,
        artifacts=[
            {
                "path": f"/output/sweep/{name}/evaluation/results.json",
                "name": "results.json",
                "size": results_file.stat().st_size,
                "sha256": hashlib.sha256(results_file.read_bytes()).hexdigest(),
            }
        ],
        outcome="success",
    )
    (root / name / "model").mkdir()
    (root / name / "model" / "manifest.json").write_bytes(artifacts.json_bytes(manifest.document()))


def verdict(drop: float, max_drop: float) -> Gate | None:
    return report.gate({"keras": 0.9, "tflite_quantized": 0.9 - drop}, max_drop)


def collect(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root), *args], capture_output=True, text=True)


def test_one_row_per_run_in_natural_order(tmp_path, template):
    """CSV: one row per run, named after its folder, in natural order (2 before 10), with the
    settings from manifest.json, the four accuracies, the drop from Keras to the quantized
    TFLite model, the peak memory in MiB and the seconds summed over the stages."""
    write_run(tmp_path, "10-qnnpack", 0.95, template, platform="qnnpack", batches=3)
    write_run(tmp_path, "2-imx500", 0.97, template)
    proc = collect(tmp_path, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run"] for r in rows] == ["2-imx500", "10-qnnpack"]
    row = rows[1]
    assert (row["target_platform"], row["iteration_count"], row["status"]) == ("qnnpack", "3", "ok")
    assert float(row["keras"]) == 0.95 and float(row["drop"]) == pytest.approx(0.03)
    assert (row["peak_memory_mb"], row["seconds"]) == ("700", "3.5")


def test_markdown_by_default_and_from_stdin_as_in_the_loader_pod(tmp_path, template):
    """Without --format the table is Markdown; the script piped into `python - ROOT` (how
    k8s/README.md runs it in the loader pod) prints the same table."""
    write_run(tmp_path, "0-a", 0.9, template)
    by_path = collect(tmp_path)
    piped = subprocess.run(
        [sys.executable, "-", str(tmp_path)], input=SCRIPT.read_text(), capture_output=True, text=True
    )
    assert piped.returncode == by_path.returncode == 0, piped.stderr
    assert piped.stdout == by_path.stdout
    header, rule, row = by_path.stdout.splitlines()
    assert header.startswith("| run | target_platform |") and row.startswith(
        "| 0-a | imx500 | 10 | 16 | 0 | 140 | 0.9000 |"
    )


def test_runs_are_paired_by_hash_wherever_they_were_copied(tmp_path, template):
    """Results and manifests are paired by the SHA-256 the manifest records, not by path:
    folders copied to another root still pair, and two runs with identical results.json files
    each get their own manifest (the nearest)."""
    copied = tmp_path / "copied"
    write_run(tmp_path / "sweep", "0-a", 0.9, template, batches=3)
    write_run(tmp_path / "sweep", "1-b", 0.9, template, batches=7)
    shutil.copytree(tmp_path / "sweep", copied)
    proc = collect(copied, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["run"], r["iteration_count"], r["status"]) for r in rows] == [("0-a", 3, "ok"), ("1-b", 7, "ok")]


def test_the_gate_column_shows_each_runs_verdict(tmp_path, template):
    """`gate` is passed or failed where the run had an accuracy gate, empty where it had none;
    a failed gate is still a complete run (exit 0)."""
    write_run(tmp_path, "0-a", 0.9, template, gate=verdict(0.0, 0.01))
    write_run(tmp_path, "1-b", 0.8, template, gate=verdict(0.2, 0.01))
    write_run(tmp_path, "2-c", 0.7, template)
    proc = collect(tmp_path, "--format", "json")
    assert proc.returncode == 0
    assert [r["gate"] for r in json.loads(proc.stdout)] == ["passed", "failed", None]


def test_incomplete_or_changed_runs_are_listed_and_exit_1(tmp_path, template):
    """A results.json without manifest (a run that failed or still runs), a manifest without
    results.json, and a results.json changed after its manifest was written are each listed
    with their status; the script names them and exits 1."""
    write_run(tmp_path, "0-ok", 0.9, template)
    (tmp_path / "1-running" / "evaluation").mkdir(parents=True)
    shutil.copy(tmp_path / "0-ok" / "evaluation" / "results.json", tmp_path / "1-running" / "evaluation")
    write_run(tmp_path, "2-lost", 0.8, template)
    shutil.rmtree(tmp_path / "2-lost" / "evaluation")
    write_run(tmp_path, "3-edited", 0.7, template)
    results = tmp_path / "3-edited" / "evaluation" / "results.json"
    results.write_text(results.read_text().replace("0.7", "0.75", 1))
    assert '"top_1_accuracy_keras": 0.75' in results.read_text()
    proc = collect(tmp_path, "--format", "json")
    rows = [(r["run"], r["status"] == "ok") for r in json.loads(proc.stdout)]
    assert proc.returncode == 1
    # 3-edited twice: its results.json and its manifest.json, neither paired.
    assert rows == [("0-ok", True), ("1-running", False), ("2-lost", False), ("3-edited", False), ("3-edited", False)]
    assert all(run in proc.stderr for run in ("1-running", "2-lost", "3-edited"))


@pytest.mark.parametrize("make_root", [lambda p: p, lambda p: p / "missing"], ids=["empty", "missing"])
def test_nothing_to_collect_exits_2(tmp_path, make_root):
    """An empty folder, or one that does not exist, gives no table and exit 2."""
    proc = collect(make_root(tmp_path))
    assert proc.returncode == 2 and proc.stdout == "" and "collect_results:" in proc.stderr


def rewrite_results(root: Path, name: str, change) -> None:
    """Change a run's results.json with ``change(document)`` and record the new hash in its
    manifest, as if the job itself had written it so."""
    results_file = root / name / "evaluation" / "results.json"
    document = json.loads(results_file.read_text())
    change(document)
    results_file.write_text(json.dumps(document, indent=2))
    manifest_file = root / name / "model" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["artifacts"][0]["sha256"] = hashlib.sha256(results_file.read_bytes()).hexdigest()
    manifest_file.write_text(json.dumps(manifest, indent=2))


def test_a_file_that_does_not_fit_its_schema_is_listed_with_the_reason(tmp_path, template):
    """A results.json with a key the schema does not know (or of another shape) is read through
    mctq_job.results' model: its run is listed, named, with the field at fault, and exits 1; the
    settings still come from its manifest."""
    write_run(tmp_path, "0-ok", 0.9, template)
    write_run(tmp_path, "1-odd", 0.9, template, batches=4)
    rewrite_results(tmp_path, "1-odd", lambda doc: doc["agreement"].update(keras_vs_elsewhere=1.0))
    proc = collect(tmp_path, "--format", "json")
    rows = json.loads(proc.stdout)
    assert proc.returncode == 1 and "1-odd" in proc.stderr
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"].startswith("results.json does not fit its schema: agreement.keras_vs_elsewhere")
    assert (rows[1]["iteration_count"], rows[1]["keras"]) == (4, None)


def test_a_results_json_from_before_the_task_field_still_reads(tmp_path, template):
    """results.json gained `task` without a new results_version: files without it read as classification."""
    write_run(tmp_path, "0-old", 0.9, template)
    rewrite_results(tmp_path, "0-old", lambda doc: doc.pop("task"))
    proc = collect(tmp_path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["status"] == "ok"


def detection_maps(map_50_95: tuple[float, ...], map_50: tuple[float, ...]) -> dict[str, float]:
    """results.json's mAP keys of a detection run: the four models' mAP@[.5:.95] and mAP@.5."""
    maps = dict(zip(DETECTION_KEYS, (*map_50_95, *map_50), strict=True))
    assert list(maps) == [f"map_50_95_{m}" for m in MODELS] + [f"map_50_{m}" for m in MODELS]
    return maps


def test_detection_runs_show_their_map_beside_the_top_1_of_classification_runs(tmp_path, template):
    """A sweep that holds both tasks: the table gains `task`, the detection runs' mAP@[.5:.95]
    and mAP@.5 of the four models and `map_drop` (the fraction of Keras' mAP@[.5:.95] that
    model_quantized.tflite loses, as max_map_drop measures it, with that gate's verdict), each
    empty where the run is of the other task; the classification runs keep their top-1 and drop."""
    write_run(tmp_path, "0-digits", 0.9, template)
    maps = detection_maps((0.40, 0.39, 0.40, 0.36), (0.68, 0.67, 0.68, 0.66))
    gate = report.map_gate({"keras": 0.40, "tflite_quantized": 0.36}, 0.05)
    write_run(tmp_path, "1-detector", 0.0, template, detection=maps, gate=gate, batches=4)
    proc = collect(tmp_path, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert list(rows[0])[:2] == ["run", "task"]
    digits, detector = rows
    assert (digits["task"], detector["task"]) == ("classification", "detection")
    assert float(digits["keras"]) == 0.9 and float(digits["drop"]) == pytest.approx(0.03)
    assert all(digits[key] == "" for key in (*DETECTION_KEYS, "map_drop"))
    assert all(detector[m] == "" for m in (*MODELS, "drop"))
    assert {key: float(detector[key]) for key in DETECTION_KEYS} == maps
    assert float(detector["map_drop"]) == pytest.approx(0.1)  # (0.40 - 0.36) / 0.40
    assert (detector["gate"], detector["iteration_count"], detector["status"]) == ("failed", "4", "ok")

    header, _, *lines = collect(tmp_path).stdout.splitlines()
    assert "| map_50_95_keras |" in header and "| map_50_tflite_quantized | map_drop |" in header
    assert lines[1].startswith("| 1-detector | detection | imx500 | 4 | 16 | 0 | 140 | - | - | - | - | - | 0.4000 |")


def test_a_table_of_detection_runs_only_has_no_top_1_columns(tmp_path, template):
    """Detection runs alone: the mAP columns, none of the classification ones; a Keras mAP of
    0 leaves map_drop empty rather than dividing by it."""
    write_run(tmp_path, "0-a", 0.0, template, detection=detection_maps((0.5,) * 4, (0.7,) * 4))
    write_run(tmp_path, "1-b", 0.0, template, detection=detection_maps((0.0,) * 4, (0.0,) * 4))
    proc = collect(tmp_path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert not set(rows[0]) & {*MODELS, "drop"} and set(DETECTION_KEYS) < set(rows[0])
    assert [r["map_drop"] for r in rows] == [0.0, None]


def test_a_classification_only_table_is_laid_out_as_before_detection(tmp_path, template):
    """No detection run: neither `task` nor any mAP column, so scripts reading the CSV of a
    classification sweep read the same columns as before."""
    write_run(tmp_path, "0-a", 0.9, template)
    header = collect(tmp_path, "--format", "csv").stdout.splitlines()[0]
    assert header == (
        "run,target_platform,iteration_count,batch_size,seed,image_count,"
        "keras,keras_quantized,tflite,tflite_quantized,drop,gate,peak_memory_mb,seconds,status"
    )
