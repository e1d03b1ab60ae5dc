"""results.json and manifest.json from the stages' values: per-class accuracy, the sparse
confusion matrix, agreement between models and the accuracy gate; the models they are built
from, read back byte for byte and checked against the published JSON Schemas."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest
from results_support import evaluation, run_values

from mctq_job import artifacts, report, results
from mctq_job.results import MODELS

LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
ROOT = Path(__file__).resolve().parent.parent


def test_per_class_accuracy_counts_only_classes_with_images():
    table = report.per_class(LABELS, np.array([0, 1, 1, 1, 2, 0, 2]), {"a": 0, "b": 1, "c": 2, "unused": 3})
    assert {name: row.document() for name, row in table.items()} == {
        "a": {"label": 0, "images": 2, "correct": 1, "top_1_accuracy": 0.5},
        "b": {"label": 1, "images": 2, "correct": 2, "top_1_accuracy": 1.0},
        "c": {"label": 2, "images": 3, "correct": 2, "top_1_accuracy": pytest.approx(2 / 3)},
    }


def test_confusion_is_sparse_sorted_triples_that_sum_to_the_image_count():
    triples = report.confusion(LABELS, np.array([0, 1, 1, 1, 2, 0, 2]))
    assert triples == [(0, 0, 1), (0, 1, 1), (1, 1, 2), (2, 0, 1), (2, 2, 2)]
    assert sum(n for _, _, n in triples) == len(LABELS)
    assert report.confusion(np.zeros(0, np.int64), np.zeros(0, np.int32)) == []


@pytest.mark.slow
def test_agreement_compares_predictions_not_correctness():
    wrong_the_same_way = np.array([1, 1, 1, 1, 1, 1, 1])
    agreement = report.agreement(
        evaluation(LABELS, {"tflite": wrong_the_same_way, "tflite_quantized": wrong_the_same_way})
    )
    assert agreement.tflite_vs_tflite_quantized == 1.0
    assert agreement.keras_vs_tflite_quantized == pytest.approx(2 / 7)
    assert agreement.keras_vs_keras_quantized == 1.0


@pytest.mark.slow
def test_results_keep_the_notebooks_four_keys_first_and_add_the_details():
    values = run_values(
        evaluation(LABELS, {"tflite_quantized": np.array([0, 0, 1, 1, 2, 2, 0])}), {"a": 0, "b": 1, "c": 2}, seed=3
    )
    doc = report.results(values).document()
    assert list(doc)[:4] == [f"top_1_accuracy_{name}" for name in MODELS]
    assert doc["top_1_accuracy_tflite_quantized"] == pytest.approx(6 / 7)
    quantized = doc["models"]["tflite_quantized"]
    assert (quantized["file"], quantized["bytes"]) == (
        "/o/model_quantized.tflite",
        values.exported.models["tflite_quantized"].size,
    )
    assert quantized["latency"] == values.evaluation.latencies["tflite_quantized"]
    assert doc["sizes"]["quantized_to_float_ratio"] == pytest.approx(0.25, abs=0.01)
    assert doc["calibration"]["distinct_images_drawn"] == 2
    assert quantized["per_class"]["c"]["correct"] == 2 and [2, 0, 1] in quantized["confusion"]
    assert doc["seed"] == 3 and doc["class_count"] == 3 and doc["results_version"] == report.RESULTS_VERSION
    assert doc["task"] == "classification"


@pytest.mark.slow
def test_census_and_io_are_written_for_the_tflite_files_only():
    """Absent (not null) for the Keras models, as before the results had a model."""
    doc = report.results(run_values(evaluation(LABELS, {}), {"a": 0, "b": 1, "c": 2})).document()
    for name, model in doc["models"].items():
        tflite = name.startswith("tflite")
        assert ("census" in model, "io" in model, model["file"] is not None) == (tflite, tflite, tflite), name


@pytest.mark.slow
def test_the_document_reads_back_to_the_same_bytes(tmp_path):
    """results.json and manifest.json as written parse through the models into the same bytes,
    with every field's type and key order kept (the notebook's keys first)."""
    values = run_values(evaluation(LABELS, {}), {"a": 0, "b": 1, "c": 2}, max_top1_drop=0.0, imx500=True)
    path = tmp_path / "results.json"
    path.write_bytes(artifacts.json_bytes(report.results(values).document()))
    assert artifacts.json_bytes(results.Results.read(path).document()) == path.read_bytes()
    manifest = _manifest(values)
    path = tmp_path / "manifest.json"
    path.write_bytes(artifacts.json_bytes(manifest.document()))
    assert artifacts.json_bytes(results.Manifest.read(path).document()) == path.read_bytes()
    assert results.Manifest.read(path).config == values.config


def _manifest(values: report.RunValues) -> results.Manifest:
    return report.manifest(
        run_id="abc",
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:01.000Z",
        config_file="/p/configuration.json",
        config_doc=values.config.to_document(),
        config_sha256=values.config.digest(),
        versions={"mctq_job": "0", "tensorflow": "2.15.1", "numpy": "1.26.4", "model_compression_toolkit": "2.6.1"},
        stage_seconds={"config": 0.1},
        peak_memory_bytes=1,
        artifacts=[{"path": "/r/results.json", "name": "results.json", "size": 1, "sha256": "0" * 64}],
        outcome="success",
    )


@pytest.mark.slow
def test_a_value_the_schema_does_not_allow_fails_the_report():
    """A stage value of another shape (here a census without integer_only) is a bug of the job's,
    caught where results.json is made rather than written."""
    values = run_values(evaluation(LABELS, {}), {"a": 0, "b": 1, "c": 2})
    tflite = values.exported.models["tflite"]
    census = {key: value for key, value in tflite.census.items() if key != "integer_only"}
    files = {**values.exported.files, "tflite": dataclasses.replace(tflite, census=census)}
    broken = dataclasses.replace(values, exported=dataclasses.replace(values.exported, files=files))
    with pytest.raises(pydantic.ValidationError, match="integer_only"):
        report.results(broken)


def test_the_notebook_keys_come_first_in_the_model():
    assert list(results.Results.model_fields)[:4] == list(results.NOTEBOOK_KEYS)
    assert list(MODELS) == [key.removeprefix("top_1_accuracy_") for key in results.NOTEBOOK_KEYS]


@pytest.mark.slow
def test_the_published_schemas_accept_what_the_producer_writes():
    """The JSON Schemas of `mctq-job schema --results/--manifest`, checked by a JSON Schema
    validator (not pydantic), accept the producer's documents and reject a stray key."""
    from conftest import schema_problems

    values = run_values(evaluation(LABELS, {}), {"a": 0, "b": 1, "c": 2}, max_top1_drop=0.1, imx500=True)
    doc = report.results(values).document()
    assert schema_problems("results", doc) == []
    assert schema_problems("manifest", _manifest(values).document()) == []
    assert schema_problems("results", {**doc, "stray": 1}) != []


@pytest.mark.slow
def test_every_field_the_producer_writes_has_a_row_in_docs_outputs_md():
    values = run_values(
        evaluation(LABELS, {}), {"a": 0, "b": 1, "c": 2}, max_top1_drop=0.1, imx500=True, mixed_precision=True
    )
    page = (ROOT / "docs" / "outputs.md").read_text()
    documented = set(_paths_in(results.results_table_markdown()))
    assert results.results_table_markdown() in page
    written = set(_field_paths(report.results(values).document()))
    assert written - documented == set()


def _paths_in(table: str) -> list[str]:
    return [line.split("`")[1] for line in table.splitlines()[2:]]


#: The keys that are data (class names, model names, operators), as the docs' tables name them.
_PLACEHOLDERS = {"classes": "<class>", "per_class": "<class>", "models": "<model>", "operators": "<operator>"}


def _field_paths(document: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in document.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if key in _PLACEHOLDERS and isinstance(value, dict):
            for inner in value.values():
                placeholder = f"{path}.{_PLACEHOLDERS[key]}"
                if isinstance(inner, dict):
                    paths += _field_paths(inner, placeholder + ".")
        elif isinstance(value, dict) and key not in ("gptq", "qat", "mixed_precision"):
            paths += _field_paths(value, path + ".")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            paths += _field_paths(value[0], path + "[].")
    return paths


@pytest.mark.parametrize(
    "keras,quantized,max_drop,passed",
    [
        (0.98, 0.96, 0.02, True),  # exactly at the limit passes, despite float rounding
        (0.98, 0.95, 0.02, False),
        (0.90, 0.93, 0.0, True),  # a gain is never a drop
        (0.9, 0.9, 0.0, True),
    ],
)
def test_gate_passes_up_to_the_allowed_drop(keras, quantized, max_drop, passed):
    verdict = report.gate({"keras": keras, "tflite_quantized": quantized}, max_drop)
    assert verdict is not None and verdict.passed is passed
    assert verdict.top_1_drop == pytest.approx(keras - quantized)
    assert (verdict.reference, verdict.candidate) == ("keras", "tflite_quantized")


def test_no_gate_without_a_limit():
    assert report.gate({"keras": 1.0, "tflite_quantized": 0.0}, None) is None


def test_sizes_ratio():
    assert report.sizes(100, 4000, 1000).document() == {
        "keras_parameters": 100,
        "tflite_bytes": 4000,
        "tflite_quantized_bytes": 1000,
        "quantized_to_float_ratio": 0.25,
    }


@pytest.mark.parametrize("option,model", [("--results", results.Results), ("--manifest", results.Manifest)])
def test_schema_prints_the_documents_json_schema_without_tensorflow(option, model):
    """`mctq-job schema --results/--manifest` print the JSON Schema the tests validate every run's
    files against; like plain `schema`, without importing TensorFlow, MCT or numpy."""
    code = (
        "import sys; from mctq_job.cli import main\n"
        f"try:\n    main(['schema', '{option}'])\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('tensorflow', 'model_compression_toolkit', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == json.loads(json.dumps(results.json_schema(model)))
    assert "HEAVY []" in proc.stderr


@pytest.mark.slow
def test_the_run_check_catches_a_published_file_that_breaks_its_schema(tmp_path):
    """conftest's check of every run's published files (run_cli, LiveRun) fails on a stray key."""
    from conftest import check_published_documents

    values = run_values(evaluation(LABELS, {}), {"a": 0, "b": 1, "c": 2})
    path = tmp_path / "results.json"
    event = json.dumps({"event": "artifact.written", "name": "results.json", "path": str(path)})
    path.write_bytes(artifacts.json_bytes(report.results(values).document()))
    check_published_documents(["console line", event])
    path.write_bytes(artifacts.json_bytes({**report.results(values).document(), "stray": 1}))
    with pytest.raises(AssertionError, match="breaks the published schema"):
        check_published_documents([event])
