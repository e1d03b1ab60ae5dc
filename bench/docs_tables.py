#!/usr/bin/env python3
"""Every bench table rendered from the bench's JSON alone, and docs/benchmarks.md's tables
rewritten from it: each sits between `<!-- bench: NAME -->` and `<!-- end bench -->`.

    python -m bench.docs_tables [--json docs/bench.json]          rewrite docs/benchmarks.md
    python -m bench.docs_tables --check [--json docs/bench.json]  exit 1 if a block differs

Imports neither TensorFlow nor MCT.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    common,
    converter_ptq,
    detection_compare,
    diagnosis,
    irreducible,
    realphotos,
    realsize_compare,
    recovery,
    throughput,
)

PAGE = common.ROOT / "docs" / "benchmarks.md"
DOCS_JSON = common.ROOT / "docs" / "bench.json"
BLOCK = re.compile(r"(<!-- bench: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end bench -->)", re.S)
#: The digits targets: model_quantized.tflite / model.tflite, and |top-1 tflite_quantized - keras_quantized|.
DIGITS_LIMITS = {"size_over_float": 0.30, "top1_gap_to_mct_keras": 0.005}


def responsiveness_table(report: dict[str, Any]) -> str:
    figures = report["figures"]
    job = figures["run"]
    rows = [
        ("`--help`", f"{figures['help_s']} s", "<= 1.2 s"),
        (f"`validate` (demo: {figures['images']})", f"{figures['validate_s']} s", "<= 1.2 s"),
        ("first log line of `run`", f"{figures['first_log_line_s']} s", "<= 1.2 s"),
        ("longest gap between log lines", f"{job['max_gap_between_lines_s']} s", "< 5 s"),
        ("whole demo job, wall", f"{job['wall_s']} s", "-"),
        ("peak memory (RSS)", f"{job['peak_memory_mb']} MB", "-"),
    ] + [(f"stage `{k}`", f"{v} s", "-") for k, v in job["stage_seconds"].items()]
    return common.markdown_table(("measure", "value", "target"), rows)


def memory_table(report: dict[str, Any]) -> str:
    figures = report["comparisons"]["memory_scaling"]
    rows = [
        (
            f"{r['validation_images']:,}",
            r["wall_s"],
            r["evaluate_stage_s"],
            f"{common.mb(r['peak_memory_bytes'])} MB ({r['peak_memory_bytes']:,} bytes)",
        )
        for r in figures["runs"]
    ]
    rows.append(
        (
            f"ratio {figures['validation_images_ratio']}x / 1x",
            f"{figures['wall_s_ratio']}x",
            f"{figures['evaluate_stage_s_ratio']}x",
            f"{figures['peak_memory_bytes_ratio']}x",
        )
    )
    return common.markdown_table(
        ("validation images", "job wall (s)", "stage `evaluate` (s)", "peak memory (RSS, manifest.json)"), rows
    )


def digits_int8_table(report: dict[str, Any]) -> str:
    figures = report["comparisons"]["digits_int8"]
    rows = [
        (label, f"{figures[name]['value']}", f"<= {figures[name]['limit']}", verdict(figures[name]))
        for name, label in (
            ("size_over_float", "size: model_quantized.tflite / model.tflite"),
            (
                "top1_gap_to_mct_keras",
                "top-1 gap: model_quantized.tflite vs MCT's quantized Keras model (results.json)",
            ),
        )
    ]
    rows.append(
        (
            "top-1: Keras / MCT Keras / model.tflite / model_quantized.tflite",
            " / ".join(str(figures["top_1"][k]) for k in ("keras", "keras_quantized", "tflite", "tflite_quantized")),
            "-",
            "-",
        )
    )
    return common.markdown_table(("measure (digits demo)", "value", "target", ""), rows)


def imx500_table(report: dict[str, Any]) -> str:
    figures = report["comparisons"]["imx500"]
    if "skipped" in figures:
        return common.markdown_table(("IMX500 conversion (digits demo)", "value"), [("skipped", figures["skipped"])])
    rows = [
        ("converter version", figures["converter_version"]),
        ("TPC version", figures["tpc_version"]),
        ("quantize + Keras export (s)", figures["quantize_and_export_seconds"]),
        ("conversion (s)", figures["convert_seconds"]),
        ("converter's peak memory, whole process tree", f"{figures['convert_peak_rss_mb']} MB"),
    ]
    return common.markdown_table(("IMX500 conversion (digits demo)", "value"), rows)


def targets_table(report: dict[str, Any]) -> str:
    rows = [
        (f"{scope}: `{name}`", target["value"], f"<= {target['limit']}", verdict(target))
        for scope, targets in all_targets(report).items()
        for name, target in targets.items()
    ]
    return common.markdown_table(("target", "measured", "limit", ""), rows)


def all_targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    comparisons = report["comparisons"]
    found = {"digits": {k: comparisons["digits_int8"][k] for k in DIGITS_LIMITS}}
    if "realsize" in comparisons:
        found["MobileNetV2 224"] = comparisons["realsize"]["targets"]
        if "diagnosis" in comparisons["realsize"]:
            found["MobileNetV2 224, diagnosis"] = comparisons["realsize"]["diagnosis"]["targets"]
    if "detection" in comparisons:
        found["SSD MobileNetV2 320 (detection)"] = comparisons["detection"]["targets"]
    if "recovery" in comparisons:
        found["hostile model, recovery"] = comparisons["recovery"]["targets"]
    if "realphotos" in comparisons:
        found["MobileNetV2 224, real photographs"] = comparisons["realphotos"]["targets"]
    return found


def verdict(target: dict[str, Any]) -> str:
    return realsize_compare.verdict(target)


def comparison(name: str, render: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    return lambda report: render(report["comparisons"][name])


#: name -> (title, table of a report); a quick report has no real-size sections.
SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "targets": ("Targets", targets_table),
    "realsize-job": (
        "MobileNetV2 224x224: the job vs the notebook's way",
        comparison("realsize", realsize_compare.job_table),
    ),
    "realsize-tflite": (
        "MobileNetV2 224x224: size and latency of the four .tflite files",
        comparison("realsize", realsize_compare.tflite_table),
    ),
    "realsize-diagnosis": (
        "MobileNetV2 224x224: the diagnosis' overhead",
        lambda report: diagnosis.table(report["comparisons"]["realsize"]["diagnosis"]),
    ),
    "realsize-photos": (
        "MobileNetV2 224x224 trained on real photographs: top-1 drops",
        comparison("realphotos", realphotos.table),
    ),
    "detection-job": (
        "SSD-lite MobileNetV2 320x320 detector: the job vs the notebook's way",
        comparison("detection", detection_compare.job_table),
    ),
    "detection-demo": (
        "Detection demo: mAP of the four models",
        comparison("detection", detection_compare.demo_table),
    ),
    "digits-int8": ("Digits: the fully integer model_quantized.tflite", digits_int8_table),
    "imx500": ("Digits: Sony's IMX500 converter", imx500_table),
    "recovery": ("Hostile model: diagnosis and recovery", comparison("recovery", recovery.table)),
    "responsiveness": ("Responsiveness and cost (demo project)", responsiveness_table),
    "throughput": (
        "(a) Evaluation throughput: the job's way vs the notebook's",
        comparison("evaluation_throughput", throughput.table),
    ),
    "irreducible": (
        "(b) Job wall time vs the sum of its irreducible parts",
        comparison("irreducible", irreducible.table),
    ),
    "tflite-int8": (
        "(c) MCT INT8 vs the TFLite converter's full-integer quantization",
        comparison("tflite_int8", converter_ptq.table),
    ),
    "memory": ("(d) Peak memory with 1x and 10x the validation images", memory_table),
}


def tables(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """name -> (title, markdown) of every section the report has figures for."""
    present = {
        name: entry
        for name, entry in SECTIONS.items()
        if (not name.startswith("realsize") or "realsize" in report["comparisons"])
        and (not name.startswith("detection") or "detection" in report["comparisons"])
    }
    return {name: (title, render(report)) for name, (title, render) in present.items()}


def publish_comparison(name: str, figures: dict[str, Any]) -> None:
    """``figures`` as docs/bench.json's ``comparisons.<name>``, the rest of the file kept, and
    docs/benchmarks.md's tables rewritten from it (a bench module measured alone with --publish)."""
    report = json.loads(DOCS_JSON.read_text())
    report["comparisons"][name] = figures
    DOCS_JSON.write_text(json.dumps(report, indent=2) + "\n")
    PAGE.write_text(render_page(PAGE.read_text(), report))


def render_page(text: str, report: dict[str, Any]) -> str:
    """``text`` with each bench block's body replaced by its table rendered from ``report``."""
    rendered = tables(report)

    def body(match: re.Match) -> str:
        name = match.group("name")
        if name not in rendered:
            raise SystemExit(f"docs_tables: {PAGE.name} has a block {name!r} the report has no figures for")
        return match.group(1) + rendered[name][1] + "\n" + match.group(4)

    return BLOCK.sub(body, text)


def missing_blocks(text: str, report: dict[str, Any]) -> list[str]:
    """The sections ``report`` has figures for that have no block on the page ``text``."""
    present = {m.group("name") for m in BLOCK.finditer(text)}
    return [name for name in tables(report) if name not in present]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docs_tables", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DOCS_JSON)
    parser.add_argument("--page", type=Path, default=PAGE, help="the page to check or rewrite")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale or missing")
    args = parser.parse_args()
    text, report = args.page.read_text(), json.loads(args.json.read_text())
    fresh = render_page(text, report)
    if args.check:
        stale = [m.group("name") for m in BLOCK.finditer(text) if m.group(0) not in fresh]
        missing = missing_blocks(text, report)
        if stale:
            print(
                f"{args.page}: bench blocks {stale} differ from {args.json}: run python -m bench.docs_tables",
                file=sys.stderr,
            )
        if missing:
            print(f"{args.page}: no block for the sections {missing} of {args.json}", file=sys.stderr)
        return int(bool(stale or missing))
    args.page.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
