"""Comparison (a): evaluation throughput of the two .tflite models, the job's way against the
AITRIOS notebook's way, on the same images with the same preprocessing.

- job: each image decoded and preprocessed once (``mctq_job.images.iter_batches``, next batch
  decoded on every core), batches of 32 through ``mctq_job.evaluate.TFLitePredictor`` (one
  interpreter per model, as many threads as CPUs) for both models;
- notebook: for each model separately, image by image: PIL decode and the same preprocessing
  (``load_batch([path])``), then ``tf.lite.Interpreter`` (default threads)
  set_tensor / invoke / get_tensor.

Both ways must predict the same class for every image; the figures say whether they did.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import common

if TYPE_CHECKING:
    import numpy as np

    from mctq_job.inputs import Inputs

    from .workload import JobRun

MODEL_NAMES = {"tflite": "model.tflite", "tflite_quantized": "model_quantized.tflite"}


def compare(run: JobRun) -> dict[str, Any]:
    """Figures of both ways over every validation image of the project of ``run``, with the
    models that run wrote; its results.json gives the top-1 both ways must reproduce."""
    from mctq_job.evaluate import EVAL_BATCH_SIZE
    from mctq_job.images import usable_cpus

    checked = common.load_inputs(run.project.config_file)
    model_files = {name: run.project.output_dir / file for name, file in MODEL_NAMES.items()}
    labels = common.validation_labels(checked)
    job_s, job = common.timed(batched, checked, model_files)
    notebook_s, notebook = {}, {}
    for name, file in model_files.items():
        notebook_s[name], notebook[name] = common.timed(one_by_one, checked, file)
    n = len(labels)
    total_notebook_s = round(sum(notebook_s.values()), 3)
    return {
        "images": n,
        "job": {
            "seconds": job_s,
            "images_per_s": round(n / job_s, 1),
            "batch_size": EVAL_BATCH_SIZE,
            "threads": usable_cpus(),
        },
        "notebook": {
            "seconds": total_notebook_s,
            "images_per_s": round(n / total_notebook_s, 1),
            "seconds_per_model": notebook_s,
            "batch_size": 1,
            "threads": "interpreter default",
        },
        "speedup": common.ratio(total_notebook_s, job_s),
        "top1": {
            name: {
                "job": common.top1(job[name], labels),
                "notebook": common.top1(notebook[name], labels),
                "results_json": round(run.results.accuracy(name), 4),
            }
            for name in model_files
        },
        "differing_predictions": {name: int((job[name] != notebook[name]).sum()) for name in model_files},
    }


def batched(checked: Inputs, model_files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The job's evaluation loop for both models at once."""
    from mctq_job.evaluate import TFLitePredictor

    return common.batched_predictions({name: TFLitePredictor(file) for name, file in model_files.items()}, checked)


def one_by_one(checked: Inputs, model_file: Path) -> np.ndarray:
    """The notebook's loop for one model: open, preprocess and invoke one image at a time."""
    import numpy as np
    import tensorflow as tf

    from mctq_job.images import load_batch

    cfg = checked.config
    interpreter = tf.lite.Interpreter(model_path=str(model_file))
    interpreter.allocate_tensors()
    source, result = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if source["dtype"] != np.float32:
        raise SystemExit(f"bench: {model_file} takes {source['dtype']} input; the notebook's loop feeds float32")
    predicted = []
    for path in common.validation_paths(checked):
        interpreter.set_tensor(source["index"], load_batch([path], cfg.input_tensor_size, cfg.preprocessing).pixels)
        interpreter.invoke()
        predicted.append(int(np.argmax(interpreter.get_tensor(result["index"])[0])))
    return np.asarray(predicted)


def table(figures: dict[str, Any]) -> str:
    job, notebook, top1 = figures["job"], figures["notebook"], figures["top1"]
    same = (
        "yes"
        if not any(figures["differing_predictions"].values())
        else f"no: {figures['differing_predictions']} images differ"
    )
    rows = [
        (
            f"job: decode once, batches of {job['batch_size']}, {job['threads']} threads",
            job["seconds"],
            job["images_per_s"],
            *(top1[name]["job"] for name in MODEL_NAMES),
        ),
        (
            "notebook: per model, one image per invoke, default threads",
            notebook["seconds"],
            notebook["images_per_s"],
            *(top1[name]["notebook"] for name in MODEL_NAMES),
        ),
        ("(the job's own results.json, same images)", "", "", *(top1[name]["results_json"] for name in MODEL_NAMES)),
        ("job / notebook", "-", f"{figures['speedup']}x", f"identical predictions: {same}", ""),
    ]
    header = (
        f"evaluation of both .tflite models ({figures['images']:,} images)",
        f"seconds (median of {common.REPEAT})",
        "images/s (through both models)",
        *(f"top-1 `{file}`" for file in MODEL_NAMES.values()),
    )
    return common.markdown_table(header, rows)
