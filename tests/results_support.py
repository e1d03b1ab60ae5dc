"""Stage values as the pipeline hands them to the report, made from the stages' own types and
functions (a real TFLite file's census, real latency measurements, MCT's resource record, the
IMX500 memory report's facts), so that ``report.results`` builds results.json exactly as a run
does. Used by test_report, test_report_html and test_collect_results."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import diagnosis_support
import numpy as np

from mctq_job import report
from mctq_job.results import MODELS
from mctq_job.tasks.classification import ClassFolders, Sample, Tally

CONFIG = {
    "source_keras_model": "/p/model",
    "dataset_image_dir": "/p/train",
    "batch_size": 2,
    "input_tensor_size": 8,
    "iteration_count": 1,
    "output_dir": "/o",
    "evaluate_image_dir": "/p/val",
    "evaluate_image_extension": "jpg",
    "evaluate_label_file": "/p/labels.json",
    "evaluate_result_dir": "/r",
}
#: A memory report as the IMX500 converter writes it.
MEMORY_REPORT = {
    "Memory Report": {
        "Fit In Chip": True,
        "Memory Usage": "1.25MB",
        "Model Memory Physical Size": "1MB",
        "Runtime Memory Physical Size": "256KB",
        "Reserved Memory": "0B",
        "Total Memory Available On Chip": "8MB",
    }
}


@functools.cache
def tflite_facts() -> tuple[int, dict, dict]:
    """Size, census and I/O quantization of a real (tiny, float) TFLite file."""
    import tensorflow as tf

    from mctq_job.tflite_census import census, io_quantization

    inputs = tf.keras.Input((8, 8, 3))
    outputs = tf.keras.layers.Dense(3)(tf.keras.layers.Flatten()(tf.keras.layers.Conv2D(4, 3)(inputs)))
    data = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, outputs)).convert()
    return len(data), census(data), io_quantization(data)


def truth(labels: np.ndarray, classes: dict[str, int] | None = None) -> ClassFolders:
    """The classification task's ground truth: one evaluation image per label."""
    names = {label: name for name, label in (classes or {}).items()}
    samples = tuple(
        Sample(Path(f"/p/val/{i}.jpg"), int(label), names.get(int(label), str(label))) for i, label in enumerate(labels)
    )
    return ClassFolders(classes or {names.get(int(v), str(v)): int(v) for v in labels}, samples)


def evaluation(labels: np.ndarray, predicted: dict[str, np.ndarray], skipped=()):
    """The evaluate stage's value for these per-image top-1 predictions, tallied by the real
    classification task (the true class always among the top 5), with each model's latency
    measured for real on a trivial predictor."""
    from mctq_job.evaluate import Evaluation, latency

    classes = int(labels.max()) + 1 if len(labels) else 1
    tally = Tally(truth(labels), list(MODELS))
    for name in MODELS:
        guess = np.asarray(predicted.get(name, labels), dtype=np.int32)
        scores = np.eye(max(classes, int(guess.max(initial=0)) + 1, 6), dtype=np.float32)[guess]
        scores[np.arange(len(labels)), labels] += 0.5  # the true class second at worst: within the top 5
        tally.add(name, scores, np.arange(len(labels)))
    example = np.zeros((1, 8, 8, 3), np.float32)
    latencies = {name: latency(lambda x: x, example, warmup=1, runs=3) for name in MODELS}
    return Evaluation(len(labels), tally, dict.fromkeys(MODELS, 0.01), list(skipped), latencies)


def run_values(
    evaluated,
    classes: dict[str, int],
    *,
    seed: int = 0,
    max_top1_drop: float | None = None,
    skipped: tuple[tuple[Path, str], ...] = (),
    imx500: bool = False,
    mixed_precision: bool = False,
    files: dict[str, str] | None = None,
    diagnosis: bool = False,
) -> report.RunValues:
    """Every stage's value; the files need not exist (``files``: model name -> published path)."""
    from mctq_job.calibrate import draw
    from mctq_job.config import Config
    from mctq_job.export import Exported, TFLiteFile
    from mctq_job.imx500 import memory_facts
    from mctq_job.inputs import Inputs
    from mctq_job.model import ModelInfo
    from mctq_job.quantize import Quantized, resource_record

    options = {"max_top1_drop": max_top1_drop} if max_top1_drop is not None else {}
    if mixed_precision:
        options["mixed_precision"] = {"weights_memory_ratio": 0.5}
    config = Config.model_validate({**CONFIG, "seed": seed, **options})
    files = {"tflite": "/o/model.tflite", "tflite_quantized": "/o/model_quantized.tflite", **(files or {})}
    size, census, io = tflite_facts()
    exported = Exported(
        {
            name: TFLiteFile(
                Path(path),
                Path(path).with_suffix(".staged"),
                size // (4 if "quantized" in name else 1),
                census,
                io,
                MODELS.get(name, name),
            )
            for name, path in files.items()
        }
    )
    eight_bit = resource_record(
        SimpleNamespace(weights_memory=136752, activation_memory=19456.0, total_memory=156208.0, bops=363896832)
    )
    final = resource_record(SimpleNamespace(weights_memory=40000, activation_memory=float("inf"), total_memory=None))
    calibration_images = tuple(Path(f"/p/train/{i}.jpg") for i in range(5))
    return report.RunValues(
        config,
        Inputs(
            config,
            Path("/p/configuration.json"),
            calibration_images,
            ClassFolders(classes, truth(evaluated.tally.labels, classes).samples),
            skipped=skipped,
        ),
        ModelInfo((None, 8, 8, 3), {"output_width": len(classes)}, 136874),
        draw(len(calibration_images), config),
        Quantized(None, None, {"float_8bit": eight_bit, "final": final if mixed_precision else None}),
        exported,
        evaluated,
        memory_facts(MEMORY_REPORT, "3.16.1") if imx500 else None,
        diagnosis_support.diagnosis() if diagnosis else None,
    )
