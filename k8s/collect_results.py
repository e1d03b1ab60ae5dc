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
verdict where the run had one (``max_top1_drop``).

Exit status: 0 when every run is complete; 1 when some results.json has no manifest.json or
the reverse (a run that failed or is still running); 2 when nothing was found.
Only the standard library is used, so it runs in the job's image too.
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

MODELS = ("keras", "keras_quantized", "tflite", "tflite_quantized")
COLUMNS = (
    "run",
    "target_platform",
    "iteration_count",
    "batch_size",
    "seed",
    "image_count",
    *MODELS,
    "drop",
    "gate",
    "peak_memory_mb",
    "seconds",
    "status",
)
OK = "ok"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _run_name(root: Path, *folders: Path) -> str:
    common = Path(os.path.commonpath([str(f) for f in folders]))
    relative = common.relative_to(root) if common != root and root in common.parents else Path(".")
    return root.name if str(relative) == "." else relative.as_posix()


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per run found below ``root``, in natural order of the run names."""
    root = root.absolute()
    manifests = {}
    for path in sorted(root.rglob("manifest.json")):
        document = _load(path)
        if document is not None and "artifacts" in document:
            manifests[path] = document
    by_results_hash: dict[str, list[Path]] = {}
    for path, document in manifests.items():
        for artifact in document.get("artifacts", []):
            if artifact.get("name") == "results.json" and artifact.get("sha256"):
                by_results_hash.setdefault(artifact["sha256"], []).append(path)
    rows, paired = [], set()
    for path in sorted(root.rglob("results.json")):
        results = _load(path)
        if results is None or not any(f"top_1_accuracy_{m}" in results for m in MODELS):
            continue
        # Identical results.json files may exist in several runs: the nearest unpaired manifest.
        candidates = [m for m in by_results_hash.get(sha256(path), []) if m not in paired]
        manifest_path = max(candidates, key=lambda m: len(os.path.commonpath([str(m), str(path)])), default=None)
        if manifest_path is not None:
            paired.add(manifest_path)
            row = _row(_run_name(root, path.parent, manifest_path.parent), results, manifests[manifest_path], OK)
        else:
            row = _row(_run_name(root, path.parent.parent), results, None, "no manifest.json (run incomplete?)")
        rows.append(row)
    for path, document in manifests.items():
        if path not in paired:
            rows.append(_row(_run_name(root, path.parent.parent), {}, document, "results.json missing or changed"))
    return sorted(rows, key=lambda r: _natural(r["run"]))


def _row(run: str, results: dict[str, Any], manifest: dict[str, Any] | None, status: str) -> dict[str, Any]:
    config = (manifest or {}).get("config", {})
    row: dict[str, Any] = {"run": run, "status": status}
    row["target_platform"] = results.get("target_platform", config.get("target_platform"))
    row["seed"] = results.get("seed", config.get("seed"))
    row["iteration_count"] = config.get("iteration_count")
    row["batch_size"] = config.get("batch_size")
    row["image_count"] = results.get("image_count")
    for model in MODELS:
        row[model] = results.get(f"top_1_accuracy_{model}")
    if row["keras"] is not None and row["tflite_quantized"] is not None:
        row["drop"] = row["keras"] - row["tflite_quantized"]
    else:
        row["drop"] = None
    gate = results.get("gate")
    row["gate"] = None if not isinstance(gate, dict) else "passed" if gate.get("passed") else "failed"
    peak = (manifest or {}).get("peak_memory_bytes")
    row["peak_memory_mb"] = round(peak / 2**20) if isinstance(peak, (int, float)) else None
    stages = (manifest or {}).get("stage_seconds") or {}
    row["seconds"] = round(sum(stages.values()), 1) if stages else None
    return row


def _natural(text: str) -> list[Any]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]


def _cell(value: Any, column: str, precise: bool) -> str:
    if value is None:
        return "" if precise else "-"
    if isinstance(value, float) and not precise and column in (*MODELS, "drop"):
        return f"{value:.4f}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(row[c], c, precise=False) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c], c, precise=True) for c in COLUMNS])
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
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    incomplete = [row["run"] for row in rows if row["status"] != OK]
    if incomplete:
        print(f"collect_results: incomplete runs: {', '.join(incomplete)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
