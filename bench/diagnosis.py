#!/usr/bin/env python3
"""The diagnosis' overhead at real size: the diagnose stage's seconds over the whole run's wall
time, on the real-size workload (MobileNetV2 224x224, random weights, camera-size JPEGs;
realsize.py) with the default ``diagnosis.images`` (64): MCT's quantized Keras model and
model_quantized.tflite compared with the float model layer by layer, plus the calibration
images' clipping. Target: at most 0.15 of the wall.

``make bench`` takes the figures from realsize_compare's job run (no extra run); alone, this
module runs the job once on the real-size project and prints the figures as JSON:

    .venv/bin/python -m bench.diagnosis
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from mctq_job.results import Results

from . import common, realsize
from .workload import Project, copy_project

LIMITS = {"diagnose_over_wall": 0.15}


def summary(results: Results) -> dict[str, Any]:
    """What the run's diagnosis found, from its results.json."""
    diagnosis = results.diagnosis
    if diagnosis is None:
        return {}
    return {
        "images": diagnosis.images,
        "layers": len(diagnosis.layers),
        "tflite_compared": sum(layer.tflite_compared for layer in diagnosis.layers),
        "findings": [f"{finding.kind}: {finding.layer}" for finding in diagnosis.findings],
    }


def overhead(job: dict[str, Any]) -> dict[str, Any]:
    """The figures of one job run (realsize_compare.run_job's): the diagnose stage over the wall."""
    from .realsize_compare import targets

    seconds = job["stage_seconds"].get("diagnose", 0.0)
    return {
        "wall_s": job["wall_s"],
        "diagnose_s": seconds,
        "diagnosis": job.get("diagnosis", {}),
        "targets": targets({"diagnose_over_wall": common.ratio(seconds, job["wall_s"], 3)}, LIMITS),
    }


def measure() -> dict[str, Any]:
    """The job once on a copy of the real-size project."""
    from .realsize_compare import run_job

    project = copy_project(realsize.ensure(), common.WORK / "realsize-diagnosis")
    return {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **overhead(run_job(Project(project.folder))),
    }


def table(figures: dict[str, Any]) -> str:
    """The diagnose stage against the run's wall time, and what the diagnosis compared."""
    from .realsize_compare import verdict

    target = figures["targets"]["diagnose_over_wall"]
    found = figures["diagnosis"]
    rows = [
        ("job wall (s)", figures["wall_s"]),
        ("stage `diagnose` (s)", figures["diagnose_s"]),
        (
            "diagnose / wall",
            f"{target['value']} (target <= {target['limit']}: {verdict(target).strip('*')})",
        ),
        ("evaluation images compared", found.get("images", "-")),
        (
            "quantized tensors (MCT) / of them read in model_quantized.tflite",
            f"{found.get('layers', '-')} / {found.get('tflite_compared', '-')}",
        ),
        ("findings", ", ".join(found.get("findings", [])) or "none"),
    ]
    when = f" Measured {figures['measured_at']} by `python -m bench.diagnosis`." if "measured_at" in figures else ""
    return (
        "MobileNetV2 224x224 (random weights), 64 evaluation images and as many calibration images, the "
        f"default.{when}\n\n" + common.markdown_table(("measure", "value"), rows)
    )


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
