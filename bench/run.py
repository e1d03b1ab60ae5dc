#!/usr/bin/env python3
"""`make bench`: the job at real size against the notebook's way, the job's responsiveness and
cost, and four comparisons on the digits demo, all in one run. Prints one markdown table per
measure and saves them to bench-results/bench.md, every number (with the machine and a
timestamp) to bench-results/bench.json.

    python -m bench.run               everything (about 25 minutes on 2 cores, +15 the first time)
    python -m bench.run --quick       the digits workloads only (`make bench QUICK=1`)
    python -m bench.run --write-docs  copy bench-results/bench.json to docs/bench.json and
                                      regenerate docs/benchmarks.md's tables from it

(from the repository root; each module named below is ``bench.NAME``)

Real size (realsize.py, realsize_compare.py): MobileNetV2 224x224 with camera-size JPEGs; the
job and notebook_path.py each in their own process, memory summed over the process tree;
latency and size of the four .tflite files; the diagnose stage's share of the job's wall time
(diagnosis.py, from the same job run). Real photographs (realphotos.py): MobileNetV2 224x224
trained briefly on camera frames of seven photographs; the top-1 drops of the job at both
targets against MCT's quantized Keras model and the TFLite converter's own PTQ. Detection
(detsize.py, detection_compare.py): an SSD-lite MobileNetV2 320x320 ending in edgemdt_cl's
SSDPostProcess, the job against det_notebook_path.py (quantize stage and wall), and the trained
demo detector's mAP for the four models (examples/detection.py). Digits: responsiveness (UI response <= 1.2 s for
`validate`, `--help` and the first log line of `run`; an update at least every 5 s), the
fully integer model's size and top-1, the IMX500 converter, recovery on the hostile model
(recovery.py: examples/hostile.py without and with `recover`), and
  (a) evaluation throughput of both .tflite models, the job's batched way against the
      notebook's one-image-at-a-time loop, on 10x the validation images (throughput.py);
  (b) the job's wall time against the sum of its irreducible parts, each timed alone in a
      fresh process (irreducible.py);
  (c) MCT's INT8 model against the TFLite converter's own full-integer quantization
      (converter_ptq.py);
  (d) the job's peak memory with 1x and 10x the validation images.
Timed digits comparisons are repeated (common.REPEAT) and their medians reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mctq_job.images import usable_cpus

from . import (
    common,
    converter_ptq,
    detection_compare,
    docs_tables,
    imx500_convert,
    irreducible,
    realphotos,
    realsize_compare,
    recovery,
    throughput,
    workload,
)
from .common import OUT, WORK
from .workload import DEMO, ENTRY, JobRun

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
        "images": f"{run.results.calibration.images_available:,} + {run.results.image_count:,} images",
        "run": {
            "wall_s": run.wall_s,
            "max_gap_between_lines_s": run.max_gap_s,
            "stage_seconds": run.stage_seconds,
            "peak_memory_mb": common.mb(run.peak_memory_bytes),
        },
    }


def memory_scaling(runs: list[JobRun]) -> dict[str, Any]:
    """Comparison (d): peak memory and wall of the job on 1x and on SCALE x the validation images."""
    rows = [
        {
            "validation_images": r.results.image_count,
            "wall_s": r.wall_s,
            "evaluate_stage_s": r.stage_seconds["evaluate"],
            "peak_memory_bytes": r.peak_memory_bytes,
        }
        for r in runs
    ]
    small, large = rows
    return {
        "runs": rows,
        **{
            f"{key}_ratio": common.ratio(large[key], small[key])
            for key in ("validation_images", "wall_s", "evaluate_stage_s", "peak_memory_bytes")
        },
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": metadata.version("tensorflow-cpu"),
        "model_compression_toolkit": metadata.version("model-compression-toolkit"),
    }


def digits_int8(run: JobRun) -> dict[str, Any]:
    """The digits targets of the fully integer model_quantized.tflite, from the job's results.json:
    its size over model.tflite's, and how far its top-1 is from MCT's quantized Keras model's."""
    results = run.results
    top1 = {
        name: round(results.accuracy(name), 4) for name in ("keras", "keras_quantized", "tflite", "tflite_quantized")
    }
    values = {
        "size_over_float": round(results.sizes.quantized_to_float_ratio, 3),
        "top1_gap_to_mct_keras": round(abs(top1["tflite_quantized"] - top1["keras_quantized"]), 4),
    }
    return {"top_1": top1, **realsize_compare.targets(values, docs_tables.DIGITS_LIMITS)}


def imx500_conversion(config_file: Path) -> dict[str, Any]:
    """bench.imx500_convert on ``config_file`` in a fresh process, or why it was skipped."""
    if not imx500_convert.VENV_CONVERTER.exists():
        return {
            "skipped": f"no converter at {imx500_convert.VENV_CONVERTER.relative_to(common.ROOT)} "
            "(make imx500-venv builds it)"
        }
    proc = subprocess.run(
        common.module_command(imx500_convert.__name__, "--config", str(config_file)),
        env=common.child_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:  # a result to report, not a reason to lose the other figures
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"the conversion failed (exit {proc.returncode}): {last[:300]}"}
    return json.loads(proc.stdout)


def measure_digits() -> dict[str, Any]:
    """Every digits figure (the report's ``figures`` and ``comparisons``)."""
    demo_config = workload.ensure_demo()
    projects = [
        workload.copy_project(demo_config, WORK / "x1"),
        workload.copy_project(demo_config, WORK / f"x{SCALE}", validation_copies=SCALE),
    ]
    note(f"the job {common.REPEAT} times on a copy of the demo project, once on {SCALE}x its validation images")
    demo_runs = [workload.run_job(projects[0]) for _ in range(common.REPEAT)]
    runs = [workload.median_run(demo_runs), workload.run_job(projects[1])]
    note("responsiveness: --help, validate, first log line")
    figures = responsiveness(runs[0])
    note(f"(b) irreducible parts, {common.REPEAT} times in a fresh process")
    parts = irreducible.measure(projects[0].config_file, [run.wall_s for run in demo_runs])
    note("IMX500 conversion of the digits model")
    chip = imx500_conversion(projects[0].config_file)
    note(f"(a) evaluation throughput on {SCALE}x the validation images")
    speed = throughput.compare(runs[1])
    note("(c) TFLite converter full-integer quantization")
    int8 = converter_ptq.compare(runs[0], parts)
    note("recovery on the hostile model (examples/hostile.py), without and with recover")
    recovered = recovery.measure()
    return {
        "figures": figures,
        "comparisons": {
            "evaluation_throughput": speed,
            "irreducible": parts,
            "tflite_int8": int8,
            "memory_scaling": memory_scaling(runs),
            "digits_int8": digits_int8(runs[0]),
            "imx500": chip,
            "recovery": recovered,
        },
    }


def measure(quick: bool) -> dict[str, Any]:
    """Every figure: the real-size workload first (unless ``quick``), on a machine not yet warm
    with this process's TensorFlow, then the digits workloads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before this process imports TensorFlow
    realsize_figures = None
    if not quick:
        note("real size: MobileNetV2 224x224, the job and the notebook's way, each in its own process")
        realsize_figures = realsize_compare.measure()
        note("real photographs: MobileNetV2 224x224 trained briefly, the job at both targets, the converter's PTQ")
        realsize_figures["photos"] = realphotos.measure()
        note("detection: SSD-lite MobileNetV2 320x320, the job and the notebook's way; the demo detector's mAP")
        realsize_figures["detection"] = detection_compare.measure()
        (WORK / "realsize-figures.json").write_text(
            json.dumps(realsize_figures, indent=2) + "\n"
        )  # kept if a later part fails
    numbers = measure_digits()
    if realsize_figures is not None:
        numbers["comparisons"]["realphotos"] = realsize_figures.pop("photos")
        numbers["comparisons"]["detection"] = realsize_figures.pop("detection")
        numbers["comparisons"]["realsize"] = realsize_figures
    return numbers


def write_docs(source: Path = OUT / "bench.json") -> None:
    """Publish ``source`` as docs/bench.json and rewrite docs/benchmarks.md's tables from it."""
    report = json.loads(source.read_text())
    if "realsize" not in report["comparisons"]:
        sys.exit(f"bench: {source} is a QUICK run (no real-size figures); run the full `make bench` first")
    docs_tables.DOCS_JSON.write_text(source.read_text())
    docs_tables.PAGE.write_text(docs_tables.render_page(docs_tables.PAGE.read_text(), report))
    note(f"wrote {docs_tables.DOCS_JSON.relative_to(common.ROOT)} and {docs_tables.PAGE.relative_to(common.ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits workloads only")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="measure nothing: copy bench-results/bench.json to docs/ and rewrite its tables",
    )
    args = parser.parse_args()
    if args.write_docs:
        write_docs()
        return
    began = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    numbers = measure(args.quick)
    wall = round(time.perf_counter() - began, 1)
    report = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "targets": {"ui_response_s": 1.2, "max_gap_s": 5.0},
        "bench_wall_s": wall,
        **numbers,
    }
    (OUT / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = "\n\n".join(f"#### {title}\n\n{table}" for title, table in docs_tables.tables(report).values())
    (OUT / "bench.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nbench wall time {wall} s; saved {OUT / 'bench.json'} and {OUT / 'bench.md'}")


if __name__ == "__main__":
    main()
