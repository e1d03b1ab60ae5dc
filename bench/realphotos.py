#!/usr/bin/env python3
"""Accuracy on real photographs at real size: MobileNetV2 224x224 trained briefly (from
``weights=None``) to tell apart seven real photographs shipped offline with scikit-image and
scikit-learn, from camera frames of them (random crops with exposure, colour and noise
changes, as a camera pointed at the scene would take them). The job then quantizes it as
users would, and the bench sets the top-1 drops side by side:

- the default target (imx500): model_quantized.tflite's drop against MCT's quantized Keras
  model's drop (the export must be faithful: at most +0.5 point);
- ``target_platform: "tflite"``: model_quantized.tflite's drop against the TFLite converter's
  own full-integer quantization of the same model with the same calibration images (at most
  +0.5 point).

The project (frames, labels, the trained model, configuration.json written last) is built once
under bench-results/work/realphotos/ in a fresh process.

    .venv/bin/python -m bench.realphotos [DEST]     build the project only
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mctq_job.results import MODELS

from . import common, converter_ptq, realsize_compare, workload
from .workload import INPUT_LAYOUT, OUTPUT_LAYOUT, Project, copy_project

PROJECT = common.WORK / "realphotos"
#: The photographs (loader module, function): colour photos bundled with the packages, no download.
PHOTOS = {
    "astronaut": ("skimage.data", "astronaut"),
    "cat": ("skimage.data", "chelsea"),
    "coffee": ("skimage.data", "coffee"),
    "rocket": ("skimage.data", "rocket"),
    "hubble": ("skimage.data", "hubble_deep_field"),
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
}
INPUT_SIZE = 224
FRAME = (640, 480)  # VGA camera frames
TRAIN_PER_CLASS = 120
CALIBRATION_IMAGES = 300
EVALUATION_PER_CLASS = 36
EPOCHS = 6
BATCH = 32
JPEG_QUALITY = 85
MODEL_PATH = "model/photos.keras"
#: Upper bounds on drop differences (fractions of the evaluation set): 0.5 point each.
LIMITS = {"export_drop_over_mct_keras_drop": 0.005, "tflite_target_drop_over_converter_drop": 0.005}


def source_photos() -> dict[str, Any]:
    """name -> RGB uint8 array of each photograph."""
    import importlib

    photos = {}
    for name, (module, item) in PHOTOS.items():
        if module == "sklearn":
            from sklearn.datasets import load_sample_image

            photos[name] = load_sample_image(item)
        else:
            photos[name] = getattr(importlib.import_module(module), item)()
    return photos


def frame(photo, rng):
    """One camera frame of ``photo``: a random 4:3 window over 15-60% of it, maybe mirrored,
    with exposure, contrast, saturation and white balance changed, sensor noise, FRAME size."""
    import numpy as np
    from PIL import Image, ImageEnhance

    height, width = photo.shape[:2]
    area = rng.uniform(0.15, 0.6) * height * width
    w = int(min(width, np.sqrt(area * 4 / 3)))
    h = int(min(height, w * 3 / 4))
    x0, y0 = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
    image = Image.fromarray(photo[y0 : y0 + h, x0 : x0 + w]).resize(FRAME, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))
    pixels = np.asarray(image, np.float32) * rng.uniform(0.85, 1.15, 3)  # white balance
    pixels += 5 * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_frames(folder: Path, photos: list, count: int, rng, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        frame(photos[k % len(photos)], rng).save(folder / f"{prefix}_{k:04d}.jpg", quality=JPEG_QUALITY)


def train(photos: dict[str, Any], rng, dest: Path) -> dict[str, Any]:
    """MobileNetV2 224 from random weights on TRAIN_PER_CLASS fresh frames per photo, fed
    exactly as the job feeds its inputs (its own preprocessing); saved at ``dest``."""
    import io
    import time

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from mctq_job.config import Preprocessing
    from mctq_job.images import resize, to_array

    spec = Preprocessing()
    images, labels = [], []
    for label, photo in enumerate(photos.values()):
        for _ in range(TRAIN_PER_CLASS):
            buffer = io.BytesIO()
            frame(photo, rng).save(buffer, format="JPEG", quality=JPEG_QUALITY)  # as the job reads them
            images.append(to_array(resize(Image.open(buffer).convert("RGB"), INPUT_SIZE, spec), spec))
            labels.append(label)
    x, y = np.stack(images), np.asarray(labels)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.MobileNetV2(
        input_shape=(INPUT_SIZE, INPUT_SIZE, 3), weights=None, classes=len(photos)
    )
    for layer in model.layers:  # Keras' 0.999 would leave the moving statistics near their initial
        if isinstance(layer, tf.keras.layers.BatchNormalization):  # values after ~160 steps: chance
            layer.momentum = 0.9  # top-1 at inference
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    began = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=True, verbose=2)
    dest.parent.mkdir(parents=True, exist_ok=True)
    model.save(dest)
    return {
        "train_images": len(y),
        "epochs": EPOCHS,
        "train_seconds": round(time.perf_counter() - began, 1),
        "train_accuracy": round(float(history.history["accuracy"][-1]), 4),
    }


def build(dest: Path) -> Path:
    """Write the whole project under ``dest``; return its configuration.json."""
    import numpy as np

    rng = np.random.default_rng(0)
    photos = source_photos()
    every = list(photos.values())
    write_frames(dest / INPUT_LAYOUT["dataset_image_dir"], every, CALIBRATION_IMAGES, rng, "calib")
    for name, photo in photos.items():
        write_frames(dest / INPUT_LAYOUT["evaluate_image_dir"] / name, [photo], EVALUATION_PER_CLASS, rng, name)
    (dest / INPUT_LAYOUT["evaluate_label_file"]).write_text(json.dumps({n: i for i, n in enumerate(photos)}) + "\n")
    training = train(photos, rng, dest / MODEL_PATH)
    (dest / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    paths = {**INPUT_LAYOUT, **OUTPUT_LAYOUT, "source_keras_model": MODEL_PATH}
    document = {
        **{key: f"./{relative}" for key, relative in paths.items()},
        "batch_size": 50,
        "iteration_count": 10,
        "input_tensor_size": INPUT_SIZE,
        "evaluate_image_extension": "jpg",
    }
    config = dest / "configuration.json"
    config.write_text(json.dumps(document, indent=2) + "\n")
    return config


def ensure(dest: Path = PROJECT) -> Path:
    """``dest``'s configuration.json, after building the project in a fresh process if missing."""
    config = dest / "configuration.json"
    if not config.exists():
        subprocess.run(common.module_command(__spec__.name, str(dest)), env=common.child_env(), check=True)
    return config


def run_job(project: Project, **overrides: Any) -> dict[str, Any]:
    """The job on ``project`` with ``overrides`` in its configuration: results.json's figures."""
    document = json.loads(project.config_file.read_text())
    project.config_file.write_text(json.dumps({**document, **overrides}, indent=2) + "\n")
    results = workload.run_job(project).results
    top1 = {name: round(results.accuracy(name), 4) for name in MODELS}
    return {"top_1": top1, "agreement": results.agreement.document()}


def measure() -> dict[str, Any]:
    """Both job runs and the converter's model on the photographs, with the targets checked."""
    config = ensure()
    training = json.loads((config.parent / "training.json").read_text())
    imx500 = run_job(copy_project(config, common.WORK / "realphotos-imx500"))
    tflite = run_job(copy_project(config, common.WORK / "realphotos-tflite"), target_platform="tflite")
    converter = converter_ptq.measure(config, common.WORK / "realphotos-converter-int8.tflite")["top1"]
    keras = imx500["top_1"]["keras"]
    drops = {
        "imx500_mct_keras": keras - imx500["top_1"]["keras_quantized"],
        "imx500_model_quantized_tflite": keras - imx500["top_1"]["tflite_quantized"],
        "tflite_model_quantized_tflite": keras - tflite["top_1"]["tflite_quantized"],
        "converter_full_integer": keras - converter,
    }
    values = {
        "export_drop_over_mct_keras_drop": drops["imx500_model_quantized_tflite"] - drops["imx500_mct_keras"],
        "tflite_target_drop_over_converter_drop": drops["tflite_model_quantized_tflite"]
        - drops["converter_full_integer"],
    }
    return {
        "training": training,
        "evaluation_images": EVALUATION_PER_CLASS * len(PHOTOS),
        "classes": list(PHOTOS),
        "imx500": imx500,
        "tflite": tflite,
        "converter_full_integer_top1": converter,
        "drops": {k: round(v, 4) for k, v in drops.items()},
        "targets": realsize_compare.targets({k: round(v, 4) for k, v in values.items()}, LIMITS),
    }


def table(figures: dict[str, Any]) -> str:
    """Top-1 of every model and the drops the targets compare, in points."""
    imx500, tflite, drops = figures["imx500"]["top_1"], figures["tflite"]["top_1"], figures["drops"]

    def pts(value: float) -> str:
        return f"{100 * value:.1f}"

    rows = [
        ("Keras float", imx500["keras"], "-", imx500["keras"], "-"),
        ("model.tflite (float)", imx500["tflite"], "-", tflite["tflite"], "-"),
        (
            "MCT's quantized Keras model",
            imx500["keras_quantized"],
            pts(drops["imx500_mct_keras"]),
            tflite["keras_quantized"],
            pts(tflite["keras"] - tflite["keras_quantized"]),
        ),
        (
            "model_quantized.tflite (job)",
            imx500["tflite_quantized"],
            pts(drops["imx500_model_quantized_tflite"]),
            tflite["tflite_quantized"],
            pts(drops["tflite_model_quantized_tflite"]),
        ),
        (
            "TFLite converter's own full-integer PTQ",
            "-",
            "-",
            figures["converter_full_integer_top1"],
            pts(drops["converter_full_integer"]),
        ),
    ]
    training = figures["training"]
    header = ("model", "top-1, target imx500 (default)", "drop (points)", "top-1, target tflite", "drop (points)")
    return (
        f"{figures['evaluation_images']} evaluation frames of {len(figures['classes'])} photographs "
        f"({', '.join(figures['classes'])}); MobileNetV2 224x224 trained from random weights on "
        f"{training['train_images']} other frames for {training['epochs']} epochs "
        f"({training['train_seconds']} s, train accuracy {training['train_accuracy']}).\n\n"
        + common.markdown_table(header, rows)
    )


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT))
