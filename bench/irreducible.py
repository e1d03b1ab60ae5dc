#!/usr/bin/env python3
"""Comparison (b): the job's wall time against the sum of its irreducible parts, each timed
alone in a fresh process on the job's inputs.

    python -m bench.irreducible CONFIG OUT_JSON     writes the seconds of each part

Parts in the sum: importing TensorFlow and MCT, loading the Keras model, MCT's
``keras_post_training_quantization`` call alone (imx500 target platform, the calibration
batches already decoded in memory), MCT's INT8 TFLite export, TensorFlow's float conversion,
and batched inference of the four models (Keras float, MCT's quantized Keras, both .tflite)
on pre-decoded validation pixels. Decoding the calibration and validation images is timed
as well but kept out of the sum. :func:`measure` runs this script and compares.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import common  # stdlib only at import time: the timed imports below stay cold

#: Parts of the sum, in the job's order: (key, description).
PARTS = {
    "import_tensorflow": "`import tensorflow`",
    "import_mct": "`import model_compression_toolkit`",
    "load_model": "load the Keras model",
    "mct_ptq": "`mct.ptq.keras_post_training_quantization` (batches in memory)",
    "mct_export": "MCT export to INT8 .tflite",
    "tf_convert": "`TFLiteConverter.from_keras_model(model).convert()`",
    "infer_keras": "inference: Keras float",
    "infer_keras_quantized": "inference: MCT's quantized Keras",
    "infer_tflite": "inference: model.tflite",
    "infer_tflite_quantized": "inference: model_quantized.tflite",
}
#: Timed too, outside the sum.
EXTRAS = {
    "decode_calibration": "decode + preprocess the calibration batches (not in the sum)",
    "decode_validation": "decode + preprocess the validation images (not in the sum)",
}

#: The job's default quantization, the one measured here.
DEFAULT_OPTIONS = {"target_platform": "imx500", "quantization_method": "ptq", "mixed_precision": None}


class Clock:
    """Seconds of each named block."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - began, 3)


def main(config_file: Path, out: Path) -> None:
    clock = Clock()
    with clock("import_tensorflow"):
        import tensorflow as tf
    with clock("import_mct"):
        import model_compression_toolkit as mct
    checked = common.load_inputs(config_file)
    cfg = checked.config
    chosen = [getattr(cfg, key, default) for key, default in DEFAULT_OPTIONS.items()]
    if chosen != list(DEFAULT_OPTIONS.values()):
        sys.exit(f"irreducible.py measures the job's default options {DEFAULT_OPTIONS}; the configuration has {chosen}")
    with clock("decode_calibration"):
        batches = common.calibration_batches(checked)
    with clock("decode_validation"):
        pixels = common.validation_pixels(checked)
    tf.keras.utils.set_random_seed(cfg.seed)  # as the job does, untimed
    tf.config.experimental.enable_op_determinism()
    with clock("load_model"):
        model = tf.keras.models.load_model(str(cfg.source_keras_model), compile=False)
    quantized = quantize(clock, mct, model, batches)
    with tempfile.TemporaryDirectory() as tmp:
        files = export(clock, mct, tf, model, quantized, Path(tmp))
        infer(clock, {"keras": model, "keras_quantized": quantized, **files}, pixels)
    out.write_text(json.dumps(clock.seconds) + "\n")


def quantize(clock: Clock, mct: Any, model: Any, batches: list) -> Any:
    def representative_data_gen():
        for batch in batches:
            yield [batch]

    tpc = mct.get_target_platform_capabilities(device_type="imx500")
    with clock("mct_ptq"):
        quantized, _ = mct.ptq.keras_post_training_quantization(
            model, representative_data_gen, target_platform_capabilities=tpc
        )
    return quantized


def export(clock: Clock, mct: Any, tf: Any, model: Any, quantized: Any, folder: Path) -> dict[str, Path]:
    from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat

    files = {"tflite": folder / "model.tflite", "tflite_quantized": folder / "model_quantized.tflite"}
    with clock("mct_export"):
        mct.exporter.keras_export_model(
            model=quantized,
            save_model_path=str(files["tflite_quantized"]),
            serialization_format=KerasExportSerializationFormat.TFLITE,
            quantization_format=QuantizationFormat.INT8,
        )
    with clock("tf_convert"):
        files["tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return files


def infer(clock: Clock, models: dict[str, Any], pixels: Any) -> None:
    """Batched inference of each model over ``pixels``, as the job batches (predictors built untimed)."""
    from mctq_job.evaluate import EVAL_BATCH_SIZE, KerasPredictor, TFLitePredictor

    predictors = {name: TFLitePredictor(m) if isinstance(m, Path) else KerasPredictor(m) for name, m in models.items()}
    for name, predict in predictors.items():
        with clock(f"infer_{name}"):
            for start in range(0, len(pixels), EVAL_BATCH_SIZE):
                predict(pixels[start : start + EVAL_BATCH_SIZE])


def measure(config_file: Path, job_walls_s: list[float]) -> dict[str, Any]:
    """Run this script ``REPEAT`` times on ``config_file``, each in a fresh process; set the sum
    of each part's median against the median of ``job_walls_s``."""
    runs = [_fresh_process(config_file, common.WORK / "irreducible.json") for _ in range(common.REPEAT)]
    seconds = {key: common.median(run[key] for run in runs) for key in {**PARTS, **EXTRAS}}
    total, wall = round(sum(seconds[key] for key in PARTS), 3), common.median(job_walls_s)
    return {
        "job_wall_s": wall,
        "job_walls_s": job_walls_s,
        "sum_s": total,
        "overhead_ratio": common.ratio(wall, total),
        "parts_s": {key: seconds[key] for key in PARTS},
        "not_in_sum_s": {key: seconds[key] for key in EXTRAS},
        "repeats": len(runs),
    }


def _fresh_process(config_file: Path, out: Path) -> dict[str, float]:
    env = common.child_env(TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    proc = subprocess.run(
        common.module_command(__spec__.name, str(config_file), str(out)), env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"bench: irreducible.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def table(figures: dict[str, Any]) -> str:
    rows = [(PARTS[key], s) for key, s in figures["parts_s"].items()]
    rows += [
        ("**sum of the irreducible parts**", f"**{figures['sum_s']}**"),
        (
            f"**job wall** (`entrypoint.py --config` subprocess, median of {len(figures['job_walls_s'])})",
            f"**{figures['job_wall_s']}**",
        ),
        ("**overhead ratio** wall / sum", f"**{figures['overhead_ratio']}**"),
    ]
    rows += [(EXTRAS[key], s) for key, s in figures["not_in_sum_s"].items()]
    return common.markdown_table((f"part (alone, fresh process; median of {figures['repeats']})", "seconds"), rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
