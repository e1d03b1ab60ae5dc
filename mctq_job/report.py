"""Stage ``report``: results.json and manifest.json as plain data (pure functions)."""

from __future__ import annotations

import platform
from typing import Any

from .evaluate import MODELS, Evaluation

RESULTS_VERSION = 1
MANIFEST_VERSION = 1
#: manifest.json fields that differ between two runs of the same inputs and seed.
VOLATILE_MANIFEST_FIELDS = ("run_id", "started_at", "finished_at", "stage_seconds", "peak_memory_bytes",
                            "config_file", "versions.platform")
#: results.json fields that differ between two runs of the same inputs and seed.
VOLATILE_RESULT_FIELDS = ("models.*.inference_seconds", "models.*.ms_per_image")


def results(evaluation: Evaluation, files: dict[str, str | None], extra: dict[str, Any]) -> dict[str, Any]:
    """results.json: the notebook's four keys first, then counts and per-model details."""
    doc: dict[str, Any] = {f"top_1_accuracy_{name}": evaluation.accuracy(name) for name in MODELS}
    doc["results_version"] = RESULTS_VERSION
    doc["image_count"] = evaluation.image_count
    doc["class_count"] = int(len(set(evaluation.labels.tolist())))
    doc.update(extra)
    doc["models"] = {name: _model_details(evaluation, name, files.get(name)) for name in MODELS}
    doc["volatile_fields"] = list(VOLATILE_RESULT_FIELDS)
    return doc


def _model_details(evaluation: Evaluation, name: str, file: str | None) -> dict[str, Any]:
    score = evaluation.scores[name]
    return {
        "description": MODELS[name],
        "file": file,
        "correct": score.correct,
        "top_1_accuracy": evaluation.accuracy(name),
        "inference_seconds": round(score.seconds, 3),
        "ms_per_image": round(1000 * score.seconds / evaluation.image_count, 3),
    }


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
