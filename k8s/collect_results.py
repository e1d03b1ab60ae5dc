#!/usr/bin/env python3
"""One table of every run's accuracies under an output folder (e.g. a sweep's).

    python k8s/collect_results.py ./sweep-output                 # Markdown
    python k8s/collect_results.py ./sweep-output --format csv
    kubectl -n mctq exec -i mctq-loader -- python - /output/sweep < k8s/collect_results.py

Finds every results.json and manifest.json below OUTPUT_ROOT and pairs them by the SHA-256
the manifest records for its results.json, so the folders may have been copied anywhere
(``kubectl cp``). A run is named after the folder holding both, relative to OUTPUT_ROOT
(``0-imx500-10-batches`` in a sweep). The settings (target platform, calibration batches,
seed) come from the resolved configuration in manifest.json; ``gate`` is the accuracy gate's
verdict where the run had one (``max_top1_drop``, or ``max_map_drop`` for detection).

Classification runs show the four models' top-1 accuracies (columns named after the models)
and ``drop``, Keras top-1 minus model_quantized.tflite top-1. Detection runs (``"task":
"detection"``) show the four models' COCO mAP@[.5:.95] (``map_50_95_<model>``) and mAP@.5
(``map_50_<model>``) and ``map_drop``, the fraction of the Keras model's mAP@[.5:.95] that
model_quantized.tflite loses (as ``max_map_drop`` measures it). Each task's columns appear
where the table holds a run of that task, with ``task`` after ``run`` once detection runs are
among them: a table of classification runs only is laid out as before detection existed.

Both files are read through the job's own models (``mctq_job.results``), so the script runs
wherever mctq-job is installed: in the job's image (the loader pod) or with the repository's
venv. A file that does not fit its schema is listed with the reason.

Exit status: 0 when every run is complete; 1 when some results.json has no manifest.json or
the reverse (a run that failed or is still running), or a file does not fit its schema; 2 when
nothing was found or mctq-job is not installed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

try:
    import pydantic

    from mctq_job.results import GATE_CANDIDATE, GATE_REFERENCE, MODELS, Manifest, Results
except ImportError as exc:  # not the job's image or venv
    print(
        f"collect_results: needs mctq-job installed (the job's image, or the repository's .venv): {exc}",
        file=sys.stderr,
    )
    sys.exit(2)

SETTINGS = ("target_platform", "iteration_count", "batch_size", "seed", "image_count")
#: Classification: top-1 accuracy of each model (the column is the model's name) and its drop.
TOP_1_COLUMNS = (*MODELS, "drop")
#: Detection: mAP@[.5:.95] and mAP@.5 of each model, and the relative mAP@[.5:.95] drop.
MAP_COLUMNS = (*(f"map_50_95_{m}" for m in MODELS), *(f"map_50_{m}" for m in MODELS), "map_drop")
TRAILING = ("gate", "peak_memory_mb", "seconds", "status")
#: Every column, in order; a table leaves out the task columns no run of it has.
COLUMNS = ("run", "task", *SETTINGS, *TOP_1_COLUMNS, *MAP_COLUMNS, *TRAILING)
SHARES = (*TOP_1_COLUMNS, *MAP_COLUMNS)
DETECTION = "detection"
OK = "ok"
#: The keys that make a JSON file a results.json of either task.
HEADLINE_PREFIXES = ("top_1_accuracy_", "map_50_95_")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: Path) -> Any:
    """The file's JSON, or None where it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _validated(model: type[Results] | type[Manifest], document: Any) -> tuple[Any, str | None]:
    """(the document as ``model``, None), or (None, why it does not fit the schema)."""
    try:
        return model.model_validate(document), None
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return None, f"{where}: {first['msg']}{more}"


def _run_name(root: Path, *folders: Path) -> str:
    common = Path(os.path.commonpath([str(f) for f in folders]))
    relative = common.relative_to(root) if common != root and root in common.parents else Path(".")
    return root.name if str(relative) == "." else relative.as_posix()


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per run found below ``root``, in natural order of the run names."""
    root = root.absolute()
    manifests: dict[Path, tuple[Manifest | None, str | None]] = {}
    by_results_hash: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("manifest.json")):
        document = _load(path)
        if not isinstance(document, dict) or not isinstance(document.get("artifacts"), list):
            continue  # not a manifest the job wrote
        manifests[path] = _validated(Manifest, document)
        for artifact in document["artifacts"]:
            if isinstance(artifact, dict) and artifact.get("name") == "results.json" and artifact.get("sha256"):
                by_results_hash.setdefault(artifact["sha256"], []).append(path)
    rows, paired = [], set()
    for path in sorted(root.rglob("results.json")):
        document = _load(path)
        if not isinstance(document, dict) or not any(key.startswith(HEADLINE_PREFIXES) for key in document):
            continue  # not a results.json the job wrote
        results, problem = _validated(Results, document)
        # Identical results.json files may exist in several runs: the nearest unpaired manifest.
        candidates = [m for m in by_results_hash.get(sha256(path), []) if m not in paired]
        manifest_path = max(candidates, key=lambda m: len(os.path.commonpath([str(m), str(path)])), default=None)
        if manifest_path is not None:
            paired.add(manifest_path)
            manifest, manifest_problem = manifests[manifest_path]
            status = _unfit(problem, manifest_problem) or OK
            row = _row(_run_name(root, path.parent, manifest_path.parent), results, manifest, status)
        else:
            status = _unfit(problem, None) or "no manifest.json (run incomplete?)"
            row = _row(_run_name(root, path.parent.parent), results, None, status)
        rows.append(row)
    for path, (manifest, problem) in manifests.items():
        if path not in paired:
            status = _unfit(None, problem) or "results.json missing or changed"
            rows.append(_row(_run_name(root, path.parent.parent), None, manifest, status))
    return sorted(rows, key=lambda r: _natural(r["run"]))


def _unfit(results_problem: str | None, manifest_problem: str | None) -> str | None:
    """Why the run's files do not fit their schemas, or None where they do."""
    named = (("results.json", results_problem), ("manifest.json", manifest_problem))
    return "; ".join(f"{name} does not fit its schema: {why}" for name, why in named if why) or None


def _row(run: str, results: Results | None, manifest: Manifest | None, status: str) -> dict[str, Any]:
    config = manifest.config if manifest else None
    row: dict[str, Any] = {"run": run, "status": status}
    row["target_platform"] = results.target_platform if results else config.target_platform if config else None
    row["seed"] = results.seed if results else config.seed if config else None
    row["iteration_count"] = config.iteration_count if config else None
    row["batch_size"] = config.batch_size if config else None
    row["image_count"] = results.image_count if results else None
    row["task"] = results.task if results else config.task if config else None
    headline = results.headline() if results else {}
    for model in MODELS:
        row[model] = headline.get(f"top_1_accuracy_{model}")
        row[f"map_50_95_{model}"] = headline.get(f"map_50_95_{model}")
        row[f"map_50_{model}"] = headline.get(f"map_50_{model}")
    row["drop"] = _difference(row[GATE_REFERENCE], row[GATE_CANDIDATE])
    reference = row[f"map_50_95_{GATE_REFERENCE}"]
    lost = _difference(reference, row[f"map_50_95_{GATE_CANDIDATE}"])
    row["map_drop"] = lost / reference if lost is not None and reference else None
    gate = results.gate if results else None
    row["gate"] = None if gate is None else "passed" if gate.passed else "failed"
    row["peak_memory_mb"] = round(manifest.peak_memory_bytes / 2**20) if manifest else None
    row["seconds"] = round(sum(manifest.stage_seconds.values()), 1) if manifest and manifest.stage_seconds else None
    return row


def _difference(reference: float | None, candidate: float | None) -> float | None:
    return None if reference is None or candidate is None else reference - candidate


def columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The columns of a table of ``rows``: each task's figures where a run of that task is
    among them (a run whose task is unknown counts as classification, the default)."""
    detection = any(row["task"] == DETECTION for row in rows)
    classification = not detection or any(row["task"] != DETECTION for row in rows)
    left_out = set()
    if not detection:
        left_out |= {"task", *MAP_COLUMNS}
    if not classification:
        left_out |= set(TOP_1_COLUMNS)
    return tuple(column for column in COLUMNS if column not in left_out)


def _natural(text: str) -> list[Any]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]


def _cell(value: Any, column: str, precise: bool) -> str:
    if value is None:
        return "" if precise else "-"
    if isinstance(value, float) and not precise and column in SHARES:
        return f"{value:.4f}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    shown = columns(rows)
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join(" --- " for _ in shown) + "|"]
    lines += ["| " + " | ".join(_cell(row[c], c, precise=False) for c in shown) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    shown = columns(rows)
    writer.writerow(shown)
    for row in rows:
        writer.writerow([_cell(row[c], c, precise=True) for c in shown])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collect_results.py", description=__doc__.splitlines()[0])
    parser.add_argument("output_root", type=Path, help="folder holding the runs' output folders")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    args = parser.parse_args(argv)
    if not args.output_root.is_dir():
        print(f"collect_results: not a folder: {args.output_root}", file=sys.stderr)
        return 2
    rows = collect(args.output_root)
    if not rows:
        print(f"collect_results: no results.json or manifest.json below {args.output_root}", file=sys.stderr)
        return 2
    if args.format == "markdown":
        sys.stdout.write(markdown(rows))
    elif args.format == "csv":
        sys.stdout.write(as_csv(rows))
    else:
        shown = columns(rows)
        sys.stdout.write(json.dumps([{c: row[c] for c in shown} for row in rows], indent=2) + "\n")
    incomplete = [row["run"] for row in rows if row["status"] != OK]
    if incomplete:
        print(f"collect_results: incomplete runs: {', '.join(incomplete)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
