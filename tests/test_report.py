"""results.json's richer parts, computed from per-image predictions: per-class accuracy,
the sparse confusion matrix, agreement between models and the accuracy gate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from mctq_job import report
from mctq_job.report import MODELS
from mctq_job.tasks.classification import ClassFolders, Sample, Tally

if TYPE_CHECKING:
    from mctq_job.evaluate import Evaluation

LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
CLASSES = {"a": 0, "b": 1, "c": 2}
TRUTH = ClassFolders(
    CLASSES, tuple(Sample(Path(f"/p/val/{i}.jpg"), int(label), "abc"[label]) for i, label in enumerate(LABELS))
)


def evaluation(**predicted) -> Evaluation:
    """The models' per-image top-1 classes (the true ones by default), tallied by the real task.
    (The Evaluation lives in the evaluate stage's module, which imports TensorFlow: the tests
    that build one are marked slow.)"""
    from mctq_job.evaluate import Evaluation

    tally = Tally(TRUTH, list(MODELS))
    for name in MODELS:
        guess = np.asarray(predicted.get(name, LABELS), dtype=np.int32)
        tally.add(name, np.eye(3, dtype=np.float32)[guess], np.arange(len(LABELS)))
    seconds = dict.fromkeys(MODELS, 0.007)
    return Evaluation(len(LABELS), tally, seconds, [], {name: {"median_ms": 1.0} for name in MODELS})


def run_values(evaluation: Evaluation, classes: dict[str, int], seed: int = 0) -> report.RunValues:
    """Stage values as the pipeline hands them to the report (files that need not exist)."""
    from mctq_job.calibrate import Drawn
    from mctq_job.config import Config
    from mctq_job.export import Exported, TFLiteFile
    from mctq_job.inputs import Inputs
    from mctq_job.model import ModelInfo
    from mctq_job.quantize import Quantized

    config = Config.model_validate(
        {
            "source_keras_model": "/p/model",
            "dataset_image_dir": "/p/train",
            "batch_size": 2,
            "input_tensor_size": 8,
            "iteration_count": 1,
            "output_dir": "/o",
            "evaluate_image_dir": "/p/val",
            "evaluate_image_extension": "jpg",
            "evaluate_label_file": "/p/labels.json",
            "evaluate_result_dir": "/r",
            "seed": seed,
        }
    )
    census = {"operators": {}, "integer_only": True}
    files = {
        "tflite": TFLiteFile(Path("/o/m.tflite"), Path("/o/.m.tmp"), 40, census, {}, "float"),
        "tflite_quantized": TFLiteFile(Path("/o/q.tflite"), Path("/o/.q.tmp"), 10, census, {}, "quantized"),
    }
    return report.RunValues(
        config,
        Inputs(config, Path("/p/configuration.json"), (), ClassFolders(classes, TRUTH.samples)),
        ModelInfo((None, 8, 8, 3), {"output_width": 3}, 100),
        Drawn([np.array([0, 1])], 2),
        Quantized(None, None, {}),
        Exported(files),
        evaluation,
    )


def test_per_class_accuracy_counts_only_classes_with_images():
    table = report.per_class(LABELS, np.array([0, 1, 1, 1, 2, 0, 2]), {"a": 0, "b": 1, "c": 2, "unused": 3})
    assert table == {
        "a": {"label": 0, "images": 2, "correct": 1, "top_1_accuracy": 0.5},
        "b": {"label": 1, "images": 2, "correct": 2, "top_1_accuracy": 1.0},
        "c": {"label": 2, "images": 3, "correct": 2, "top_1_accuracy": pytest.approx(2 / 3)},
    }


def test_confusion_is_sparse_sorted_triples_that_sum_to_the_image_count():
    triples = report.confusion(LABELS, np.array([0, 1, 1, 1, 2, 0, 2]))
    assert triples == [[0, 0, 1], [0, 1, 1], [1, 1, 2], [2, 0, 1], [2, 2, 2]]
    assert sum(n for _, _, n in triples) == len(LABELS)
    assert report.confusion(np.zeros(0, np.int64), np.zeros(0, np.int32)) == []


@pytest.mark.slow
def test_agreement_compares_predictions_not_correctness():
    wrong_the_same_way = np.array([1, 1, 1, 1, 1, 1, 1])
    agreement = report.agreement(evaluation(tflite=wrong_the_same_way, tflite_quantized=wrong_the_same_way))
    assert agreement["tflite_vs_tflite_quantized"] == 1.0
    assert agreement["keras_vs_tflite_quantized"] == pytest.approx(2 / 7)
    assert agreement["keras_vs_keras_quantized"] == 1.0


@pytest.mark.slow
def test_results_keep_the_notebooks_four_keys_first_and_add_the_details():
    doc = report.results(
        run_values(evaluation(tflite_quantized=[0, 0, 1, 1, 2, 2, 0]), {"a": 0, "b": 1, "c": 2}, seed=3)
    )
    assert list(doc)[:4] == [f"top_1_accuracy_{name}" for name in MODELS]
    assert doc["top_1_accuracy_tflite_quantized"] == pytest.approx(6 / 7)
    quantized = doc["models"]["tflite_quantized"]
    assert (quantized["file"], quantized["bytes"], quantized["latency"]) == ("/o/q.tflite", 10, {"median_ms": 1.0})
    assert doc["sizes"]["quantized_to_float_ratio"] == 0.25 and doc["calibration"]["distinct_images_drawn"] == 2
    assert quantized["per_class"]["c"]["correct"] == 2 and [2, 0, 1] in quantized["confusion"]
    assert doc["seed"] == 3 and doc["class_count"] == 3 and doc["results_version"] == report.RESULTS_VERSION


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
    assert verdict["passed"] is passed
    assert verdict["top_1_drop"] == pytest.approx(keras - quantized)
    assert (verdict["reference"], verdict["candidate"]) == ("keras", "tflite_quantized")


def test_no_gate_without_a_limit():
    assert report.gate({"keras": 1.0, "tflite_quantized": 0.0}, None) is None


def test_sizes_ratio():
    assert report.sizes(100, 4000, 1000) == {
        "keras_parameters": 100,
        "tflite_bytes": 4000,
        "tflite_quantized_bytes": 1000,
        "quantized_to_float_ratio": 0.25,
    }
