#!/usr/bin/env python3
"""The notebook's way through one detection project, for the bench to time against the job:
load the Keras detector (inside ``edgemdt_cl.keras.custom_layers_scope()``), decode the job's
calibration batches (same seeded draw, same preprocessing), call MCT's post-training
quantization directly with the imx500 TPC and a plain generator, export with MCT's own exporter
(the Keras format, which Sony's IMX500 converter takes: a model ending in post-processing has no
TFLite kernel for its NMS, so there is no MCT INT8 .tflite of it), then evaluate the float and
the quantized Keras models one image at a time, post-processing included, scored with
pycocotools.

Run in a fresh process, so its wall time and memory are those of a notebook kernel doing only this:

    .venv/bin/python -m bench.det_notebook_path --config PROJECT/configuration.json --out FOLDER

Writes FOLDER/mct_quantized.keras and FOLDER/notebook_path.json (seconds of each part, mAP of
both models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import common
from .notebook_path import Clock, command_line

EXPORT_FILE = "mct_quantized.keras"


def mct_keras_export(quantized: Any, destination: Path) -> None:
    """MCT's own exporter, the Keras serialization (what a notebook hands to imxconv-tf)."""
    import model_compression_toolkit as mct

    mct.exporter.keras_export_model(model=quantized, save_model_path=str(destination))


def one_image_map(model: Any, checked: Any) -> dict[str, Any]:
    """COCO mAP of ``model`` on the evaluation images, each decoded, preprocessed and run alone;
    the boxes mapped back to the image and scored by pycocotools (the job's ground truth reader
    and scorer, so both sides count the same boxes)."""
    import numpy as np

    from mctq_job import images
    from mctq_job.tasks.detection import Tally

    cfg = checked.config

    scores = Tally(checked.truth, ["model"])
    for index, sample in enumerate(checked.truth.samples):
        pixels = images.preprocess_file(sample.path, cfg.input_tensor_size, cfg.preprocessing)
        outputs = model(pixels[None], training=False)
        scores.add("model", [np.asarray(o) for o in outputs], np.asarray([index]))
    found = scores.metrics("model")
    return {"map_50_95": found["map_50_95"], "map_50": found["map_50"]}


def run(config_file: Path, out: Path) -> dict[str, Any]:
    clock = Clock()
    tf = clock.time("import_tensorflow", __import__, "tensorflow")
    clock.time("import_mct", __import__, "model_compression_toolkit")
    from edgemdt_cl.keras import custom_layers_scope

    from .tflite_export import mct_quantized

    checked = common.load_inputs(config_file)

    def load() -> Any:
        with custom_layers_scope():
            return tf.keras.models.load_model(str(checked.config.source_keras_model), compile=False)

    model = clock.time("load_model", load)
    batches = clock.time("calibration_batches", common.calibration_batches, checked)
    quantized = clock.time("ptq", mct_quantized, model, batches)
    out.mkdir(parents=True, exist_ok=True)
    clock.time("mct_keras_export", mct_keras_export, quantized, out / EXPORT_FILE)
    mean_ap = {
        "keras": clock.time("evaluate_keras", one_image_map, model, checked),
        "keras_quantized": clock.time("evaluate_mct_keras", one_image_map, quantized, checked),
    }
    return {
        "seconds": clock.seconds,
        "map": mean_ap,
        "validation_images": len(checked.truth.samples),
        "calibration_images": sum(len(batch) for batch in batches),
        "export_bytes": (out / EXPORT_FILE).stat().st_size,
    }


def main() -> None:
    command_line(run, __doc__)


if __name__ == "__main__":
    main()
