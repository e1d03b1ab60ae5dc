"""The job against the notebook's way on the real-size workload (MobileNetV2 224x224, camera
JPEGs; realsize.py): wall time, the quantization call, peak memory of each whole process tree,
then latency and size of the four .tflite files (the job's two, MCT's own INT8 export, the
TFLite converter's own full-integer model). Targets are checked in ``targets``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mctq_job.results import MODELS, Manifest, Results

from . import common, diagnosis, notebook_path, realsize
from .workload import ENTRY, Project

#: The targets: job quantize stage / direct MCT call, job wall / notebook wall, job latency /
#: converter latency, job size / float size (upper bounds); job peak memory <= the notebook's.
LIMITS = {
    "quantize_over_mct_call": 0.4,
    "job_wall_over_notebook_wall": 0.5,
    "job_peak_over_notebook_peak": 1.0,
    "latency_over_converter_int8": 1.1,
    "size_over_float": 0.31,
}
LATENCY_RUNS = 30
TFLITE_NAMES = {
    "float": "model.tflite (job, float)",
    "job_int8": "model_quantized.tflite (job)",
    "mct_int8": "MCT's own INT8 export",
    "converter_int8": "TFLite converter full-integer",
}


def run_job(project: Project) -> dict[str, Any]:
    """The job on ``project`` in a subprocess: wall, stage seconds, both peak memories, top-1s."""
    run = common.run_sampled(
        ENTRY + ["--config", str(project.config_file)], cwd=project.folder, log=common.WORK / "realsize-job"
    )
    if run.returncode != 0:
        sys.exit(f"bench: the job failed on the real-size workload (exit {run.returncode}):\n{run.stderr[-2000:]}")
    manifest = Manifest.read(project.output_dir / "manifest.json")
    results = Results.read(project.result_dir / "results.json")
    return {
        "wall_s": run.wall_s,
        "stage_seconds": manifest.stage_seconds,
        "peak_tree_bytes": run.peak_tree_bytes,
        "manifest_peak_memory_bytes": manifest.peak_memory_bytes,
        "top_1": {name: round(results.accuracy(name), 4) for name in MODELS},
        "diagnosis": diagnosis.summary(results),
    }


def run_notebook(project: Project) -> dict[str, Any]:
    """notebook_path.py on ``project`` in a fresh process: wall, peak memory, its own part seconds."""
    out = common.WORK / "realsize-notebook"
    run = common.run_sampled(
        common.module_command(notebook_path.__name__, "--config", str(project.config_file), "--out", str(out)),
        log=common.WORK / "realsize-notebook",
        env=common.child_env(),
    )
    if run.returncode != 0:
        sys.exit(f"bench: the notebook path failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    parts = json.loads((out / notebook_path.RESULT_FILE).read_text())
    return {"wall_s": run.wall_s, "peak_tree_bytes": run.peak_tree_bytes, **parts}


def tflite_files(project: Project) -> dict[str, Path]:
    notebook_out = common.WORK / "realsize-notebook"
    return {
        "float": project.output_dir / "model.tflite",
        "job_int8": project.output_dir / "model_quantized.tflite",
        "mct_int8": notebook_out / notebook_path.FILES["mct_int8"],
        "converter_int8": common.WORK / "realsize-converter-int8.tflite",
    }


def latency_and_size(project: Project) -> dict[str, Any]:
    """Size and single-image latency (usable CPUs as threads) of the four files; the converter's
    full-integer model is made here from the job's calibration batches."""
    import tensorflow as tf

    from mctq_job.images import usable_cpus

    from .converter_ptq import convert
    from .tflite_export import latencies_ms

    checked = common.load_inputs(project.config_file)
    batches = common.calibration_batches(checked)
    model = tf.keras.models.load_model(str(checked.config.source_keras_model), compile=False)
    files = tflite_files(project)
    seconds, data = common.timed(convert, model, batches, repeat=1)
    files["converter_int8"].write_bytes(data)
    threads = usable_cpus()
    latency = latencies_ms(
        {name: path.read_bytes() for name, path in files.items()}, batches[0][:1], threads, LATENCY_RUNS
    )
    figures = {
        name: {"bytes": path.stat().st_size, "latency_ms": round(latency[name], 2)} for name, path in files.items()
    }
    return {
        "threads": threads,
        "runs": LATENCY_RUNS,
        "converter_calibration_samples": sum(map(len, batches)),
        "converter_seconds": seconds,
        "files": figures,
    }


def measure() -> dict[str, Any]:
    """Every real-size figure, with the ratios the targets are set on."""
    project = Project(realsize.ensure().parent)
    job, notebook = run_job(project), run_notebook(project)
    tflite = latency_and_size(project)
    files = tflite["files"]
    ratios = {
        "quantize_over_mct_call": common.ratio(job["stage_seconds"]["quantize"], notebook["seconds"]["ptq"], 3),
        "job_wall_over_notebook_wall": common.ratio(job["wall_s"], notebook["wall_s"], 3),
        "job_peak_over_notebook_peak": common.ratio(job["peak_tree_bytes"], notebook["peak_tree_bytes"], 3),
        "latency_over_converter_int8": common.ratio(
            files["job_int8"]["latency_ms"], files["converter_int8"]["latency_ms"], 3
        ),
        "size_over_float": common.ratio(files["job_int8"]["bytes"], files["float"]["bytes"], 3),
    }
    return {
        "workload": workload_facts(),
        "job": job,
        "notebook": notebook,
        "tflite": tflite,
        "ratios": ratios,
        "targets": targets(ratios, LIMITS),
        "diagnosis": diagnosis.overhead(job),
    }


def workload_facts() -> dict[str, Any]:
    return {
        "model": "MobileNetV2 224x224, weights=None, 10 classes (SavedModel)",
        "calibration_images": realsize.CALIBRATION_IMAGES,
        "frame_sizes": [list(s) for s in realsize.FRAME_SIZES],
        "evaluation_images": realsize.EVALUATION_IMAGES,
        **{k: v for k, v in realsize.configuration().items() if isinstance(v, int)},
    }


def targets(ratios: dict[str, float], limits: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each ratio with its upper bound and whether it is met."""
    return {
        name: {"value": ratios[name], "limit": limit, "met": ratios[name] <= limit} for name, limit in limits.items()
    }


def verdict(target: dict[str, Any]) -> str:
    return "met" if target["met"] else "**missed**"


def mb_cell(n_bytes: int) -> str:
    return f"{common.mb(n_bytes):,} MB"


def job_table(figures: dict[str, Any]) -> str:
    """The job against the notebook's way: wall, the quantization call, peak memory, stages."""
    job, notebook, goal = figures["job"], figures["notebook"], figures["targets"]
    rows = [
        (
            "wall (s)",
            job["wall_s"],
            notebook["wall_s"],
            goal["job_wall_over_notebook_wall"]["value"],
            "<= 0.5",
            verdict(goal["job_wall_over_notebook_wall"]),
        ),
        (
            "quantization (s): stage `quantize` / the PTQ call",
            job["stage_seconds"]["quantize"],
            notebook["seconds"]["ptq"],
            goal["quantize_over_mct_call"]["value"],
            "<= 0.4",
            verdict(goal["quantize_over_mct_call"]),
        ),
        (
            "peak memory, whole process tree (sampled every 0.2 s)",
            mb_cell(job["peak_tree_bytes"]),
            mb_cell(notebook["peak_tree_bytes"]),
            goal["job_peak_over_notebook_peak"]["value"],
            "<= 1.0",
            verdict(goal["job_peak_over_notebook_peak"]),
        ),
        (
            "peak memory, manifest.json (main process only)",
            mb_cell(job["manifest_peak_memory_bytes"]),
            "-",
            "-",
            "-",
            "-",
        ),
        (
            "top-1 of the float / quantized .tflite (random weights)",
            f"{job['top_1']['tflite']} / {job['top_1']['tflite_quantized']}",
            f"{notebook['top_1']['float']} / {notebook['top_1']['mct_int8']}",
            "-",
            "-",
            "-",
        ),
    ]
    rows += [(f"job stage `{name}` (s)", seconds, "-", "-", "-", "-") for name, seconds in job["stage_seconds"].items()]
    rows += [
        (f"notebook part `{name}` (s)", "-", seconds, "-", "-", "-") for name, seconds in notebook["seconds"].items()
    ]
    return common.markdown_table(("measure", "job", "notebook path", "job / notebook", "target", ""), rows)


def tflite_table(figures: dict[str, Any]) -> str:
    """Size and single-image latency of the four .tflite files, and the two targets on them."""
    tflite, goal = figures["tflite"], figures["targets"]
    float_bytes = tflite["files"]["float"]["bytes"]
    rows = [
        (
            label,
            f"{tflite['files'][name]['bytes']:,}",
            common.ratio(tflite["files"][name]["bytes"], float_bytes, 3),
            tflite["files"][name]["latency_ms"],
        )
        for name, label in TFLITE_NAMES.items()
    ]
    rows += [
        (
            "job quantized latency / converter full-integer",
            "-",
            "-",
            f"{goal['latency_over_converter_int8']['value']} (target <= 1.1: "
            f"{verdict(goal['latency_over_converter_int8'])})",
        ),
        (
            "job quantized size / model.tflite",
            "-",
            f"{goal['size_over_float']['value']} (target <= 0.31: {verdict(goal['size_over_float'])})",
            "-",
        ),
    ]
    header = (
        "file",
        "bytes",
        "size / model.tflite",
        f"latency ms (1 image per call, {tflite['threads']} threads, median of {tflite['runs']})",
    )
    return common.markdown_table(header, rows)


def main() -> None:
    """Measure the real-size figures alone (``make bench`` measures them with everything else);
    with ``--publish`` they replace docs/bench.json's ``comparisons.realsize`` and
    docs/benchmarks.md's tables are rewritten from it."""
    import argparse
    import datetime as dt
    import os

    from . import docs_tables

    parser = argparse.ArgumentParser(prog="python -m bench.realsize_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--publish", action="store_true", help="put the figures into docs/bench.json and the page")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    common.WORK.mkdir(parents=True, exist_ok=True)
    load = common.load_average()
    figures = measure()
    figures["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    figures["load_average_1min"] = [load, common.load_average()]
    (common.WORK / "realsize-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    if args.publish:
        docs_tables.publish_comparison("realsize", figures)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
