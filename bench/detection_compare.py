#!/usr/bin/env python3
"""Detection in the bench: the job against the notebook's way on the real-size detector
(detsize.py: SSD-style MobileNetV2 320x320 ending in edgemdt_cl's SSDPostProcess, random
weights, camera-size JPEGs), with the classification targets (the job's quantize stage over
MCT's PTQ called directly on the same batches <= 0.4, the job's wall over the notebook path's
<= 0.5); then the mAP of the trained demo detector (examples/detection.py) for each of the four
models, from a job run on a copy of it.

``make bench`` runs :func:`measure`; alone, this module measures and prints the figures as JSON,
and with ``--publish`` also puts them into docs/bench.json (``comparisons.detection``) and
rewrites docs/benchmarks.md's tables from it:

    .venv/bin/python -m bench.detection_compare [--publish]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from mctq_job.results import MODELS, Manifest, Results

from . import common, det_notebook_path, detsize, notebook_path, realsize
from .realsize_compare import mb_cell, targets, verdict
from .workload import ENTRY

LIMITS = {"quantize_over_mct_call": 0.4, "job_wall_over_notebook_wall": 0.5}
#: The demo project examples/detection.py builds (about 2 minutes) when no copy is given.
DEMO_SOURCE = Path(os.environ.get("DET_DEMO", common.WORK / "detdemo-source"))
MODEL_LABELS = {
    "keras": "Keras float",
    "keras_quantized": "MCT's quantized Keras model",
    "tflite": "model.tflite (float, cut) + the post-processing",
    "tflite_quantized": "model_quantized.tflite (job) + the post-processing",
}


def fresh_copy(source: Path, dest: Path) -> Path:
    """A copy of the project folder ``source`` at ``dest`` without its outputs; its configuration.json."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("output", "evaluate"))
    return dest / "configuration.json"


def run_job(config_file: Path, log: str) -> dict[str, Any]:
    """The job on ``config_file`` in a subprocess: wall, stage seconds, peak memory, mAP keys."""
    folder = config_file.parent
    load_before = common.load_average()
    run = common.run_sampled(ENTRY + ["--config", str(config_file)], cwd=folder, log=common.WORK / log)
    if run.returncode != 0:
        sys.exit(f"bench: the job failed on {config_file} (exit {run.returncode}):\n{run.stderr[-2000:]}")
    document = json.loads(config_file.read_text())
    manifest = Manifest.read(folder / document["output_dir"] / "manifest.json")
    results = Results.read(folder / document["evaluate_result_dir"] / "results.json")
    return {
        "wall_s": run.wall_s,
        "stage_seconds": manifest.stage_seconds,
        "peak_tree_bytes": run.peak_tree_bytes,
        "manifest_peak_memory_bytes": manifest.peak_memory_bytes,
        "map_50_95": {name: getattr(results, f"map_50_95_{name}") for name in MODELS},
        "map_50": {name: getattr(results, f"map_50_{name}") for name in MODELS},
        "faithfulness": _faithfulness(folder / document["evaluate_result_dir"] / "results.json"),
        "images": results.image_count,
        "load_average_1min": [load_before, common.load_average()],
    }


def _faithfulness(results_file: Path) -> Any:
    section = json.loads(results_file.read_text()).get("detection") or {}
    found = section.get("faithfulness")
    return found.get("share") if isinstance(found, dict) else found


def run_notebook(config_file: Path) -> dict[str, Any]:
    """det_notebook_path.py on ``config_file`` in a fresh process: wall, peak memory, its parts."""
    out = common.WORK / "detsize-notebook"
    load_before = common.load_average()
    run = common.run_sampled(
        common.module_command(det_notebook_path.__name__, "--config", str(config_file), "--out", str(out)),
        log=common.WORK / "detsize-notebook",
        env=common.child_env(),
    )
    if run.returncode != 0:
        sys.exit(f"bench: the detection notebook path failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    parts = json.loads((out / notebook_path.RESULT_FILE).read_text())
    return {
        "wall_s": run.wall_s,
        "peak_tree_bytes": run.peak_tree_bytes,
        "load_average_1min": [load_before, common.load_average()],
        **parts,
    }


def demo_source() -> Path:
    """The trained demo detector's project, built once with examples/detection.py in a fresh
    process (as ``make demo-detection`` does) if missing."""
    if not (DEMO_SOURCE / "configuration.json").exists():
        shutil.rmtree(DEMO_SOURCE, ignore_errors=True)
        example = common.ROOT / "examples" / "detection.py"
        subprocess.run([sys.executable, str(example), str(DEMO_SOURCE)], env=common.child_env(), check=True)
    return DEMO_SOURCE


def demo_map() -> dict[str, Any]:
    """The job on a copy of the trained demo detector: the mAP of each model."""
    source = demo_source()
    config = fresh_copy(source, common.WORK / "detdemo")
    document = json.loads(config.read_text())
    job = run_job(config, "detdemo-job")
    return {
        "model": document["source_keras_model"],
        "resize": document.get("preprocessing", {}).get("resize", "stretch"),
        "input_tensor_size": document["input_tensor_size"],
        "calibration_images": document["batch_size"] * document["iteration_count"],
        **{k: job[k] for k in ("map_50_95", "map_50", "faithfulness", "images", "wall_s")},
    }


#: Runs of each side, in the order job, notebook, notebook, job, ... (ABBA): the two sides share
#: the machine's load as evenly as two cores shared with other work allow.
ROUNDS = int(os.environ.get("DET_BENCH_ROUNDS", "2"))


def measure(rounds: int = ROUNDS) -> dict[str, Any]:
    """Every detection figure, with the ratios the targets are set on: the medians of ``rounds``
    runs of each side, alternated."""
    source = detsize.ensure().parent
    demo_source()  # built (about 2 minutes of training) before any timed run, not between them
    jobs: list[dict[str, Any]] = []
    notebooks: list[dict[str, Any]] = []
    order = [side for r in range(rounds) for side in (("job", "notebook") if r % 2 == 0 else ("notebook", "job"))]
    for side in order:
        if side == "job":
            jobs.append(run_job(fresh_copy(source, common.WORK / "detsize-run"), "detsize-job"))
        else:
            notebooks.append(run_notebook(source / "configuration.json"))
        partial = {"jobs": jobs, "notebooks": notebooks, "order": order}
        (common.WORK / "detection-runs.json").write_text(json.dumps(partial, indent=2) + "\n")  # kept if one fails
    runs = {
        "order": order,
        "job_wall_s": [run["wall_s"] for run in jobs],
        "job_quantize_s": [run["stage_seconds"]["quantize"] for run in jobs],
        "notebook_wall_s": [run["wall_s"] for run in notebooks],
        "notebook_ptq_s": [run["seconds"]["ptq"] for run in notebooks],
    }
    median = {key: statistics.median(values) for key, values in runs.items() if key != "order"}
    ratios = {
        "quantize_over_mct_call": common.ratio(median["job_quantize_s"], median["notebook_ptq_s"], 3),
        "job_wall_over_notebook_wall": common.ratio(median["job_wall_s"], median["notebook_wall_s"], 3),
    }
    return {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "workload": workload_facts(),
        "job": jobs[0],
        "notebook": notebooks[0],
        "runs": runs,
        "medians": median,
        "ratios": ratios,
        "targets": targets(ratios, LIMITS),
        "demo": demo_map(),
    }


def workload_facts() -> dict[str, Any]:
    return {
        "model": "SSD-lite MobileNetV2 320x320, weights=None, 5 classes, SSDPostProcess (.keras)",
        "calibration_images": detsize.CALIBRATION_IMAGES,
        "frame_sizes": [list(s) for s in realsize.FRAME_SIZES],
        "evaluation_images": detsize.EVALUATION_IMAGES,
        "batch_size": detsize.BATCH_SIZE,
        "iteration_count": detsize.ITERATION_COUNT,
        "resize": "letterbox",
    }


def job_table(figures: dict[str, Any]) -> str:
    """The job against the notebook's way on the real-size detector."""
    job, notebook, goal = figures["job"], figures["notebook"], figures["targets"]
    runs, median = figures.get("runs"), figures.get("medians")
    if runs and median:  # several alternated runs (since 2026-11-30): the medians, each run listed

        def cell(key: str) -> str:
            return f"{round(median[key], 2)} ({', '.join(map(str, runs[key]))})"

        walls, quantize = (
            (cell("job_wall_s"), cell("notebook_wall_s")),
            (cell("job_quantize_s"), cell("notebook_ptq_s")),
        )
    else:
        walls = (job["wall_s"], notebook["wall_s"])
        quantize = (job["stage_seconds"]["quantize"], notebook["seconds"]["ptq"])
    rows: list[tuple[Any, ...]] = [
        (
            "wall (s)" + (": median (each run)" if runs else ""),
            *walls,
            goal["job_wall_over_notebook_wall"]["value"],
            f"<= {goal['job_wall_over_notebook_wall']['limit']}",
            verdict(goal["job_wall_over_notebook_wall"]),
        ),
        (
            "quantization (s): stage `quantize` / the PTQ call" + (": median (each run)" if runs else ""),
            *quantize,
            goal["quantize_over_mct_call"]["value"],
            f"<= {goal['quantize_over_mct_call']['limit']}",
            verdict(goal["quantize_over_mct_call"]),
        ),
        (
            "peak memory, whole process tree (sampled every 0.2 s)",
            mb_cell(job["peak_tree_bytes"]),
            mb_cell(notebook["peak_tree_bytes"]),
            common.ratio(job["peak_tree_bytes"], notebook["peak_tree_bytes"], 3),
            "-",
            "-",
        ),
        ("models evaluated (one image per call in the notebook path)", 4, 2, "-", "-", "-"),
        (
            "mAP@[.5:.95] Keras float / quantized (random weights: meaningless)",
            f"{job['map_50_95']['keras']} / {job['map_50_95']['keras_quantized']}",
            f"{notebook['map']['keras']['map_50_95']} / {notebook['map']['keras_quantized']['map_50_95']}",
            "-",
            "-",
            "-",
        ),
    ]
    if "load_average_1min" in job:  # recorded since the first published run
        rows.append(("machine load average (1 min) before / after", _load(job), _load(notebook), "-", "-", "-"))
    if runs:
        rows.append(("order of the runs", " ".join(runs["order"]), "", "-", "-", "-"))
    rows += [
        (f"job stage `{name}` (s){' (first run)' if runs else ''}", seconds, "-", "-", "-", "-")
        for name, seconds in job["stage_seconds"].items()
    ]
    rows += [
        (f"notebook part `{name}` (s){' (first run)' if runs else ''}", "-", seconds, "-", "-", "-")
        for name, seconds in notebook["seconds"].items()
    ]
    work = figures["workload"]
    head = (
        f"{work['model']}; {work['calibration_images']} calibration JPEGs (1280x960, 1024x768), batch size "
        f"{work['batch_size']}, {work['iteration_count']} iterations; {work['evaluation_images']} evaluation JPEGs "
        f"with COCO boxes; {work['resize']}. Measured {figures['measured_at']} by `python -m bench.detection_compare`."
    )
    table = common.markdown_table(("measure", "job", "notebook path", "job / notebook", "target", ""), rows)
    return f"{head}\n\n{table}"


def _load(run: dict[str, Any]) -> str:
    found = run.get("load_average_1min")
    return "not recorded" if not found else " / ".join(map(str, found))


def demo_table(figures: dict[str, Any]) -> str:
    """The trained demo detector's mAP for each of the four models, and the drop from Keras."""
    demo = figures["demo"]
    base = demo["map_50_95"]["keras"]

    def drop(value: float | None) -> str:
        return "-" if value is None or base is None else f"{round(100 * (base - value), 1)}"

    rows = [
        (
            label,
            demo["map_50_95"][name],
            demo["map_50"][name],
            "-" if name == "keras" else drop(demo["map_50_95"][name]),
        )
        for name, label in MODEL_LABELS.items()
    ]
    share = demo["faithfulness"]
    head = (
        f"The demo detector of examples/detection.py (`{demo['model']}`, trained; input "
        f"{demo['input_tensor_size']}x{demo['input_tensor_size']}, {demo['resize']}), {demo['images']} evaluation "
        f"images, {demo['calibration_images']} calibration images; job wall {demo['wall_s']} s. "
        f"Faithfulness (keras_quantized detections reproduced by model_quantized.tflite): "
        f"{'-' if share is None else share}."
    )
    table = common.markdown_table(("model", "mAP@[.5:.95]", "mAP@.5", "drop from Keras (points of mAP@[.5:.95])"), rows)
    return f"{head}\n\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.detection_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--publish", action="store_true", help="put the figures into docs/bench.json and the page")
    parser.add_argument("--from-json", type=Path, help="measure nothing: take the figures from this file")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.from_json:
        figures = json.loads(args.from_json.read_text())
    else:
        common.WORK.mkdir(parents=True, exist_ok=True)
        figures = measure()
        (common.WORK / "detection-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    if args.publish:
        from . import docs_tables

        docs_tables.publish_comparison("detection", figures)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
