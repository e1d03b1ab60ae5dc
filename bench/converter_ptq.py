"""Comparison (c): TensorFlow Lite's own full-integer post-training quantization against the
job's MCT INT8 model, on the same Keras model and the same calibration images.

The converter gets ``Optimize.DEFAULT``, ``TFLITE_BUILTINS_INT8`` only, and a representative
dataset yielding the job's calibration batches one image per sample; input and output stay
float32, as in the job's ``model_quantized.tflite``. Its top-1 is measured the job's way on
the same validation images and set against the job's figures (results.json, manifest.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import common

if TYPE_CHECKING:
    import numpy as np

    from .workload import JobRun

FILE = common.WORK / "tflite_converter_int8.tflite"


def compare(job: JobRun, irreducible: dict[str, Any]) -> dict[str, Any]:
    """Figures of the converter's INT8 model, made from the inputs of ``job``'s project, next to
    the job's; ``irreducible`` (comparison b) gives MCT's quantization and export timed alone."""
    converter = measure(job.project.config_file, FILE)
    stages = job.stage_seconds
    return {
        "io": "float32 input and output",
        "calibration_samples": converter.pop("calibration_samples"),
        "tflite_converter": converter,
        "job": {
            "top1": round(job.results.accuracy("tflite_quantized"), 4),
            "top1_keras_float": round(job.results.accuracy("keras"), 4),
            "quantize_plus_export_stage_s": round(stages["quantize"] + stages["export"], 3),
            "ptq_plus_mct_export_alone_s": round(
                irreducible["parts_s"]["mct_ptq"] + irreducible["parts_s"]["mct_export"], 3
            ),
            "bytes": (job.project.output_dir / "model_quantized.tflite").stat().st_size,
            "float_tflite_bytes": (job.project.output_dir / "model.tflite").stat().st_size,
        },
    }


def measure(config_file: Path, path: Path) -> dict[str, Any]:
    """The converter's full-integer model of ``config_file``'s Keras model, calibrated on the
    job's calibration batches and written to ``path``: its top-1 on the job's validation images
    (the job's preprocessing), conversion seconds, bytes and calibration sample count."""
    import tensorflow as tf

    from mctq_job.evaluate import TFLitePredictor

    checked = common.load_inputs(config_file)
    model = tf.keras.models.load_model(str(checked.config.source_keras_model), compile=False)
    batches = common.calibration_batches(checked)
    seconds, data = common.timed(convert, model, batches)
    path.write_bytes(data)
    predicted = common.batched_predictions({"int8": TFLitePredictor(path)}, checked)["int8"]
    return {
        "top1": common.top1(predicted, common.validation_labels(checked)),
        "seconds": seconds,
        "bytes": path.stat().st_size,
        "calibration_samples": sum(len(batch) for batch in batches),
    }


def convert(model: Any, batches: list[np.ndarray]) -> bytes:
    import tensorflow as tf

    def representative_dataset():
        for batch in batches:
            for image in batch:
                yield [image[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def table(figures: dict[str, Any]) -> str:
    tfl, job = figures["tflite_converter"], figures["job"]
    rows = [
        ("top-1 on the validation set", tfl["top1"], f"{job['top1']} (Keras float: {job['top1_keras_float']})"),
        (
            "quantization time (s)",
            f"{tfl['seconds']} (conversion with calibration, median of {common.REPEAT})",
            f"{job['quantize_plus_export_stage_s']} (stages quantize + export, incl. float conversion); "
            f"{job['ptq_plus_mct_export_alone_s']} (PTQ call + MCT export alone)",
        ),
        (
            "file size (bytes)",
            f"{tfl['bytes']:,}",
            f"{job['bytes']:,} (float model.tflite: {job['float_tflite_bytes']:,})",
        ),
    ]
    header = (
        "",
        f"TFLite converter full-integer ({figures['calibration_samples']} calibration images, {figures['io']})",
        "job: MCT PTQ imx500, `model_quantized.tflite`",
    )
    return common.markdown_table(header, rows)
