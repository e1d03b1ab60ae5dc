"""Stage ``report``: results.json and manifest.json as plain data (pure functions).

results.json keeps the notebook's four ``top_1_accuracy_*`` keys first, then what the
notebook never had: top-5, per-class accuracy, confusion matrices, agreement between the
models' predictions, sizes, latency, MCT's resource utilization and the accuracy gate.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the results are plain data: reading them needs no TensorFlow
    from .evaluate import Evaluation

RESULTS_VERSION = 2
MANIFEST_VERSION = 1
#: manifest.json fields that differ between two runs of the same inputs and seed.
VOLATILE_MANIFEST_FIELDS = ("run_id", "started_at", "finished_at", "stage_seconds", "peak_memory_bytes",
                            "config_file", "versions.platform")
#: results.json fields that differ between two runs of the same inputs and seed.
VOLATILE_RESULT_FIELDS = ("models.*.inference", "models.*.latency")
#: Evaluated models in report order: (results.json key suffix, description).
MODELS = {
    "keras": "Keras model (float)",
    "keras_quantized": "MCT's quantized Keras model",
    "tflite": "model.tflite (TensorFlow converter, float)",
    "tflite_quantized": "model_quantized.tflite (MCT exporter, INT8)",
}
#: Pairs of models whose per-image top-1 predictions are compared.
AGREEMENT_PAIRS = (("keras", "keras_quantized"), ("tflite", "tflite_quantized"), ("keras", "tflite_quantized"),
                   ("keras", "tflite"))
#: The accuracy gate compares the deliverable with the model it came from.
GATE_REFERENCE, GATE_CANDIDATE = "keras", "tflite_quantized"


def results(evaluation: Evaluation, classes: dict[str, int], models: dict[str, dict[str, Any]],
            extra: dict[str, Any]) -> dict[str, Any]:
    """results.json. ``models`` gives per model its ``file``, ``bytes`` and ``latency``;
    ``extra`` is copied as is (quantization settings, calibration, sizes, ...)."""
    doc: dict[str, Any] = {f"top_1_accuracy_{name}": evaluation.accuracy(name) for name in MODELS}
    doc["results_version"] = RESULTS_VERSION
    doc["image_count"] = evaluation.image_count
    doc["class_count"] = int(len(set(evaluation.labels.tolist())))
    doc["classes"] = dict(sorted(classes.items(), key=lambda item: item[1]))
    doc.update(extra)
    doc["models"] = {name: _model_details(evaluation, name, classes, models.get(name, {})) for name in MODELS}
    doc["agreement"] = agreement(evaluation)
    doc["volatile_fields"] = list(VOLATILE_RESULT_FIELDS)
    return doc


def _model_details(evaluation: Evaluation, name: str, classes: dict[str, int], facts: dict[str, Any]) -> dict:
    score = evaluation.scores[name]
    predicted = score.predicted()
    return {
        "description": MODELS[name],
        "file": facts.get("file"),
        "bytes": facts.get("bytes"),
        "correct": score.correct,
        "top_1_accuracy": evaluation.accuracy(name),
        "top_5_accuracy": evaluation.top5_accuracy(name),
        "per_class": per_class(evaluation.labels, predicted, classes),
        "confusion": confusion(evaluation.labels, predicted),
        "inference": {"batch_size": facts.get("batch_size"), "threads": facts.get("threads"),
                      "ms_per_image": round(1000 * score.seconds / evaluation.image_count, 3)},
        "latency": facts.get("latency"),
    }


def per_class(labels: np.ndarray, predicted: np.ndarray, classes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Top-1 accuracy of each class that has evaluation images, by class name."""
    table = {}
    for name, label in sorted(classes.items(), key=lambda item: item[1]):
        mine = labels == label
        images = int(mine.sum())
        if images:
            correct = int((predicted[mine] == label).sum())
            table[name] = {"label": label, "images": images, "correct": correct, "top_1_accuracy": correct / images}
    return table


def confusion(labels: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    """The confusion matrix as sorted [true label, predicted label, count] triples, zeros left out:
    the same for 10 classes or 1,000."""
    if not len(labels):
        return []
    pairs, counts = np.unique(np.stack([labels, predicted], axis=1), axis=0, return_counts=True)
    return [[int(t), int(p), int(n)] for (t, p), n in zip(pairs, counts)]


def agreement(evaluation: Evaluation) -> dict[str, float]:
    """Fraction of images on which two models predict the same class, right or wrong."""
    predicted = {name: evaluation.scores[name].predicted() for name in MODELS}
    return {f"{a}_vs_{b}": float(np.mean(predicted[a] == predicted[b])) for a, b in AGREEMENT_PAIRS}


def sizes(keras_parameters: int, tflite_bytes: int, tflite_quantized_bytes: int) -> dict[str, Any]:
    return {"keras_parameters": keras_parameters, "tflite_bytes": tflite_bytes,
            "tflite_quantized_bytes": tflite_quantized_bytes,
            "quantized_to_float_ratio": round(tflite_quantized_bytes / tflite_bytes, 4)}


def gate(accuracies: dict[str, float], max_drop: float | None) -> dict[str, Any] | None:
    """The accuracy gate's verdict, or None without a gate. Passes when the drop is at most
    ``max_drop`` (rounded to 12 digits: 0.98 - 0.96 must not fail a 0.02 gate)."""
    if max_drop is None:
        return None
    drop = round(accuracies[GATE_REFERENCE] - accuracies[GATE_CANDIDATE], 12)
    return {"reference": GATE_REFERENCE, "candidate": GATE_CANDIDATE, "top_1_drop": drop,
            "max_top1_drop": max_drop, "passed": drop <= max_drop}


def manifest(*, run_id: str, started_at: str, finished_at: str, config_file: str, config_doc: dict[str, Any],
             config_sha256: str, versions: dict[str, str], stage_seconds: dict[str, float],
             peak_memory_bytes: int, artifacts: list[dict[str, Any]], outcome: str) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "outcome": outcome,
        "run_id": run_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "versions": {**versions, "python": platform.python_version(), "platform": platform.platform()},
        "config_file": config_file,
        "config": config_doc,
        "config_sha256": config_sha256,
        "seed": config_doc.get("seed"),
        "stage_seconds": stage_seconds,
        "peak_memory_bytes": peak_memory_bytes,
        "artifacts": artifacts,
        "volatile_fields": list(VOLATILE_MANIFEST_FIELDS),
    }
