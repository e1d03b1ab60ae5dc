#!/usr/bin/env python3
"""`make bench`: the spec's responsiveness targets, the job's cost, and four comparisons,
all measured in one run on a generated workload: the digits demo project (examples/digits.py,
built if missing) and copies of it under bench-results/work/ (hard links). Prints one
markdown table per measure and saves them to bench-results/bench.md, every number (with the
machine and a timestamp) to bench-results/bench.json.

Responsiveness targets (from the functional spec): UI response <= 1.2 s (`validate`,
`--help`, first log line of `run`); an update at least every 5 s while the job works.

Comparisons:
  (a) evaluation throughput of both .tflite models, the job's batched way against the
      notebook's one-image-at-a-time loop, on 10x the validation images (throughput.py);
  (b) the job's wall time against the sum of its irreducible parts, each timed alone in a
      fresh process (irreducible.py);
  (c) MCT's INT8 model against the TFLite converter's own full-integer quantization
      (tflite_int8.py);
  (d) the job's peak memory with 1x and 10x the validation images.
Timed comparisons are repeated (common.REPEAT) and their medians reported: 2 cores are noisy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

import common
import irreducible
import throughput
import tflite_int8
import workload
from common import OUT, WORK, markdown_table
from workload import DEMO, ENTRY, JobRun

from mctq_job.images import usable_cpus

UI_REPEAT = 5
SCALE = 10  # validation copies for (a) and (d)


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def timed_command(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(ENTRY + args, cwd=DEMO, check=True, capture_output=True)
    return time.perf_counter() - began


def first_line_latency() -> float:
    """Seconds from process start to the first JSON line of `run`; the run is then stopped."""
    began = time.perf_counter()
    proc = subprocess.Popen(ENTRY, cwd=DEMO, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    latency = time.perf_counter() - began
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return latency


def responsiveness(run: JobRun) -> dict[str, Any]:
    """The figures of the README's responsiveness table; ``run`` is the job on the demo project."""
    return {
        "help_s": common.median(timed_command(["--help"]) for _ in range(UI_REPEAT)),
        "validate_s": common.median(timed_command(["validate"]) for _ in range(UI_REPEAT)),
        "first_log_line_s": common.median(first_line_latency() for _ in range(3)),
        "run": {"wall_s": run.wall_s, "max_gap_between_lines_s": run.max_gap_s, "stage_seconds": run.stage_seconds,
                "peak_memory_mb": common.mb(run.peak_memory_bytes)},
    }


def responsiveness_table(figures: dict[str, Any], run: JobRun) -> str:
    images = f"{run.results['calibration']['images_available']:,} + {run.results['image_count']:,} images"
    job = figures["run"]
    rows = [
        ("`--help`", f"{figures['help_s']} s", "<= 1.2 s"),
        (f"`validate` (demo: {images})", f"{figures['validate_s']} s", "<= 1.2 s"),
        ("first log line of `run`", f"{figures['first_log_line_s']} s", "<= 1.2 s"),
        ("longest gap between log lines", f"{job['max_gap_between_lines_s']} s", "< 5 s"),
        ("whole demo job, wall", f"{job['wall_s']} s", "-"),
        ("peak memory (RSS)", f"{job['peak_memory_mb']} MB", "-"),
    ] + [(f"stage `{k}`", f"{v} s", "-") for k, v in job["stage_seconds"].items()]
    return markdown_table(("measure", "value", "target"), rows)


def memory_scaling(runs: list[JobRun]) -> dict[str, Any]:
    """Comparison (d): peak memory and wall of the job on 1x and on SCALE x the validation images."""
    rows = [{"validation_images": r.results["image_count"], "wall_s": r.wall_s,
             "evaluate_stage_s": r.stage_seconds["evaluate"], "peak_memory_bytes": r.peak_memory_bytes}
            for r in runs]
    small, large = rows
    return {"runs": rows, **{f"{key}_ratio": common.ratio(large[key], small[key])
                             for key in ("validation_images", "wall_s", "evaluate_stage_s", "peak_memory_bytes")}}


def memory_table(figures: dict[str, Any]) -> str:
    rows = [(f"{r['validation_images']:,}", r["wall_s"], r["evaluate_stage_s"],
             f"{common.mb(r['peak_memory_bytes'])} MB ({r['peak_memory_bytes']:,} bytes)") for r in figures["runs"]]
    rows.append((f"ratio {figures['validation_images_ratio']}x / 1x", f"{figures['wall_s_ratio']}x",
                 f"{figures['evaluate_stage_s_ratio']}x", f"{figures['peak_memory_bytes_ratio']}x"))
    return markdown_table(("validation images", "job wall (s)", "stage `evaluate` (s)",
                           "peak memory (RSS, manifest.json)"), rows)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": metadata.version("tensorflow-cpu"),
            "model_compression_toolkit": metadata.version("model-compression-toolkit")}


def measure() -> tuple[dict[str, Any], dict[str, str]]:
    """Every figure, and the markdown table of each section."""
    demo_config = workload.ensure_demo()
    projects = [workload.copy_project(demo_config, WORK / "x1"),
                workload.copy_project(demo_config, WORK / f"x{SCALE}", validation_copies=SCALE)]
    note(f"the job {common.REPEAT} times on a copy of the demo project, once on {SCALE}x its validation images")
    demo_runs = [workload.run_job(projects[0]) for _ in range(common.REPEAT)]
    runs = [workload.median_run(demo_runs), workload.run_job(projects[1])]
    note("responsiveness: --help, validate, first log line")
    figures = responsiveness(runs[0])
    note(f"(b) irreducible parts, {common.REPEAT} times in a fresh process")
    parts = irreducible.measure(projects[0].config_file, [run.wall_s for run in demo_runs])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before this process imports TensorFlow
    note(f"(a) evaluation throughput on {SCALE}x the validation images")
    speed = throughput.compare(runs[1])
    note("(c) TFLite converter full-integer quantization")
    int8 = tflite_int8.compare(runs[0], parts)
    memory = memory_scaling(runs)
    comparisons = {"evaluation_throughput": speed, "irreducible": parts, "tflite_int8": int8, "memory_scaling": memory}
    sections = {
        "Responsiveness and cost (demo project)": responsiveness_table(figures, runs[0]),
        "(a) Evaluation throughput: the job's way vs the notebook's": throughput.table(speed),
        "(b) Job wall time vs the sum of its irreducible parts": irreducible.table(parts),
        "(c) MCT INT8 vs the TFLite converter's full-integer quantization": tflite_int8.table(int8),
        f"(d) Peak memory with 1x and {SCALE}x the validation images": memory_table(memory),
    }
    return {"figures": figures, "comparisons": comparisons}, sections


def main() -> None:
    began = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    numbers, sections = measure()
    wall = round(time.perf_counter() - began, 1)
    report = {"measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "targets": {"ui_response_s": 1.2, "max_gap_s": 5.0}, "bench_wall_s": wall, **numbers}
    markdown = "\n\n".join(f"#### {title}\n\n{table}" for title, table in sections.items())
    (OUT / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "bench.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nbench wall time {wall} s; saved {OUT / 'bench.json'} and {OUT / 'bench.md'}")


if __name__ == "__main__":
    main()
