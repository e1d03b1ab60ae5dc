#!/usr/bin/env python3
"""Recovery on the hostile model (examples/hostile.py: a concatenation of a 1-channel branch
scaled x1024 with a normal one, compensated after it; a 5-point gate): the job as configured,
which fails the gate (exit 8), and the job with ``recover``, which must end within the gate
(exit 0) and within ``recover.max_seconds``. Reported: each run's wall time and top-1 figures,
the diagnosis' findings, and every recovery attempt with its outcome and seconds.

    .venv/bin/python -m bench.recovery        the two runs, figures as JSON
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
from typing import Any

from mctq_job.errors import AccuracyGateError
from mctq_job.results import Results

from . import common
from .common import ROOT, WORK
from .workload import Project, copy_project, run_job


def _hostile_example() -> Any:
    spec = importlib.util.spec_from_file_location("hostile_example", ROOT / "examples" / "hostile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure() -> Any:
    """The hostile project's configuration.json (built once into the bench's work folder)."""
    folder = WORK / "hostile-source"
    if not (folder / "configuration.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        _hostile_example().build(folder)
    return folder / "configuration.json"


#: The recovery must end within the gate, and within its own time budget.
LIMITS = {"drop_after_recovery": 0.05, "recover_over_max_seconds": 1.0}


def _figures(results: Results) -> dict[str, Any]:
    return {
        "top_1_keras": round(results.top_1_accuracy_keras, 4),
        "top_1_keras_quantized": round(results.top_1_accuracy_keras_quantized, 4),
        "top_1_tflite_quantized": round(results.top_1_accuracy_tflite_quantized, 4),
        "findings": [f"{f.kind}: {f.layer}" for f in results.diagnosis.findings] if results.diagnosis else [],
    }


def measure() -> dict[str, Any]:
    """The job on the hostile project without and with ``recover``."""
    hostile = _hostile_example()
    source = ensure()
    plain = run_job(copy_project(source, WORK / "hostile-plain"), accepted=(0, AccuracyGateError.exit_code))
    project = copy_project(source, WORK / "hostile-recover")
    config = json.loads(project.config_file.read_text())
    project.config_file.write_text(json.dumps({**config, "recover": hostile.RECOVER}, indent=2) + "\n")
    recovered = run_job(Project(project.folder), accepted=(0, AccuracyGateError.exit_code))
    recovery = recovered.results.recovery
    attempts = [
        {
            "attempt": a.attempt,
            "description": a.description,
            "outcome": a.outcome,
            "top_1": a.top_1,
            "subset_top_1": a.subset_top_1,
            "seconds": a.seconds,
        }
        for a in (recovery.attempts if recovery else [])
    ]
    from .realsize_compare import targets

    final = recovered.results
    values = {
        "drop_after_recovery": round(final.top_1_accuracy_keras - final.top_1_accuracy_tflite_quantized, 4),
        "recover_over_max_seconds": common.ratio(
            recovered.stage_seconds.get("recover", 0.0), hostile.RECOVER["max_seconds"], 3
        ),
    }
    return {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "targets": targets(values, LIMITS),
        "gate": hostile.GATE,
        "budget": hostile.RECOVER,
        "without_recover": {"exit_code": plain.returncode, "wall_s": plain.wall_s, **_figures(plain.results)},
        "with_recover": {
            "exit_code": recovered.returncode,
            "wall_s": recovered.wall_s,
            "recover_s": recovered.stage_seconds.get("recover"),
            "winner": recovery.winner if recovery else None,
            "stopped": recovery.stopped if recovery else None,
            "attempts": attempts,
            **_figures(recovered.results),
        },
    }


def table(figures: dict[str, Any]) -> str:
    """The two runs side by side, then the attempts."""
    plain, recovered = figures["without_recover"], figures["with_recover"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    rows = [
        ("exit code", plain["exit_code"], recovered["exit_code"]),
        ("wall (s)", plain["wall_s"], recovered["wall_s"]),
        ("stage `recover` (s)", "-", recovered["recover_s"]),
        ("top-1 Keras (float)", pct(plain["top_1_keras"]), pct(recovered["top_1_keras"])),
        (
            "top-1 model_quantized.tflite",
            pct(plain["top_1_tflite_quantized"]),
            pct(recovered["top_1_tflite_quantized"]),
        ),
        ("findings", ", ".join(plain["findings"]) or "none", ", ".join(recovered["findings"]) or "none"),
        ("recovery stopped", "-", recovered["stopped"] or "-"),
    ]
    attempts = [
        (a["attempt"], a["description"], a["outcome"], pct(a["subset_top_1"]), pct(a["top_1"]), a["seconds"])
        for a in recovered["attempts"]
    ]
    when = f" Measured {figures['measured_at']}." if "measured_at" in figures else ""
    return (
        f"The hostile digits model (examples/hostile.py), gate max_top1_drop {figures['gate']}, "
        f"recover {json.dumps(figures['budget'])}.{when}\n\n"
        + common.markdown_table(("", "without recover", "with recover"), rows)
        + "\n\n"
        + common.markdown_table(("attempt", "fix", "outcome", "top-1 on the subset", "top-1", "seconds"), attempts)
    )


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
