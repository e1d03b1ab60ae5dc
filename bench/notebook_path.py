#!/usr/bin/env python3
"""The notebook's way through one project, for the bench to time against the job: load the
model, decode the job's calibration batches (same seeded draw, same preprocessing), call MCT's
post-training quantization directly with the imx500 TPC and MCT's own statistics collection,
export with MCT's INT8 exporter, convert the float model with TFLiteConverter, and evaluate both
.tflite files one image per invocation.

Run in a fresh process, so its wall time and memory are those of a notebook kernel doing only this:

    .venv/bin/python -m bench.notebook_path --config PROJECT/configuration.json --out FOLDER

Writes FOLDER/mct_int8.tflite, FOLDER/model.tflite and FOLDER/notebook_path.json (seconds of
each part, top-1 of both files).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import common

RESULT_FILE = "notebook_path.json"
FILES = {"mct_int8": "mct_int8.tflite", "float": "model.tflite"}


class Clock:
    """Seconds of each named part, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def time(self, name: str, work, *args: Any) -> Any:
        began = time.perf_counter()
        result = work(*args)
        self.seconds[name] = round(time.perf_counter() - began, 2)
        return result


def one_image_top1(tflite_file: Path, checked) -> float:
    """Top-1 of ``tflite_file`` on the validation images, decoded and invoked one at a time."""
    from .throughput import one_by_one

    return common.top1(one_by_one(checked, tflite_file), common.validation_labels(checked))


def run(config_file: Path, out: Path) -> dict[str, Any]:
    clock = Clock()
    tf = clock.time("import_tensorflow", __import__, "tensorflow")
    clock.time("import_mct", __import__, "model_compression_toolkit")
    from .tflite_export import mct_int8_bytes, mct_quantized

    checked = common.load_inputs(config_file)
    model = clock.time("load_model", tf.keras.models.load_model, str(checked.config.source_keras_model), False)
    batches = clock.time("calibration_batches", common.calibration_batches, checked)
    quantized = clock.time("ptq", mct_quantized, model, batches)
    out.mkdir(parents=True, exist_ok=True)
    (out / FILES["mct_int8"]).write_bytes(clock.time("mct_int8_export", mct_int8_bytes, quantized))
    (out / FILES["float"]).write_bytes(clock.time("float_convert", convert_float, model))
    top1 = {name: clock.time(f"evaluate_{name}", one_image_top1, out / file, checked) for name, file in FILES.items()}
    return {
        "seconds": clock.seconds,
        "top_1": top1,
        "validation_images": len(checked.truth.samples),
        "calibration_images": sum(len(batch) for batch in batches),
    }


def convert_float(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def command_line(measure: Callable[[Path, Path], dict[str, Any]], description: str) -> None:
    """``--config PROJECT/configuration.json --out FOLDER``: ``measure`` run on them, its figures
    written to FOLDER/notebook_path.json and printed (this module's and det_notebook_path's)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    figures = measure(args.config.absolute(), args.out)
    (args.out / RESULT_FILE).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


def main() -> None:
    command_line(run, __doc__)


if __name__ == "__main__":
    main()
