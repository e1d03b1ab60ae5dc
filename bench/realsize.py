#!/usr/bin/env python3
"""The real-size workload, made offline: MobileNetV2 224x224 (random weights, 10 classes) as a
SavedModel, 300 camera-size photo-like calibration JPEGs, 250 evaluation JPEGs in 10 class
folders, labels.json and an AITRIOS-style configuration.json (batch_size 50, iteration_count
10, input_tensor_size 224), in the layout of the digits example.

Built once under bench-results/work/realsize/; configuration.json is written last, so its
presence means the project is complete.

    .venv/bin/python -m bench.realsize [DEST]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from . import common
from .workload import INPUT_LAYOUT, OUTPUT_LAYOUT

PROJECT = common.WORK / "realsize"
INPUT_SIZE = 224
CLASSES = 10
CALIBRATION_IMAGES = 300
EVALUATION_IMAGES = 250
#: Camera frame sizes (width, height), alternated.
FRAME_SIZES = ((1280, 960), (1024, 768))
JPEG_QUALITY = 90
MODEL_PATH = "model/saved_model"


def ensure(dest: Path = PROJECT) -> Path:
    """``dest``'s configuration.json, after building the project in a fresh process if missing
    (a fresh process, so the caller's memory holds no model)."""
    config = dest / "configuration.json"
    if not config.exists():
        subprocess.run(common.module_command(__spec__.name, str(dest)), env=common.child_env(), check=True)
    return config


def photo(rng, size: tuple[int, int], tint: int):
    """One photo-like RGB image: a smooth two-colour gradient, a few filled shapes, sensor
    noise. ``tint`` shifts the palette, so each class folder looks a little different."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = size
    dx, dy = rng.uniform(-1, 1, 2)
    xs = np.arange(width, dtype=np.float32) * (dx / width)
    ys = np.arange(height, dtype=np.float32) * (dy / height)
    ramp = (ys[:, None] + xs[None, :] + 1) / 2  # a plane across the frame, about 0..1
    start, end = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    start[tint % 3] = 40 + 20 * tint
    pixels = start + (end - start) * ramp[..., None]
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        box = [x0, y0, x0 + rng.integers(30, width // 3), y0 + rng.integers(30, height // 3)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    noisy = np.asarray(image, dtype=np.float32) + 6 * rng.standard_normal((height, width, 3), dtype=np.float32)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, rng, tint: int = 0, first: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(first, first + count):
        size = FRAME_SIZES[k % len(FRAME_SIZES)]
        photo(rng, size, tint).save(folder / f"img_{k:04d}.jpg", quality=JPEG_QUALITY)


def write_model(dest: Path) -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.MobileNetV2(input_shape=(INPUT_SIZE, INPUT_SIZE, 3), weights=None, classes=CLASSES)
    model.save(str(dest / MODEL_PATH))


def configuration() -> dict:
    """The ten keys of the notebook's configuration.json, paths relative to the project."""
    paths = {**INPUT_LAYOUT, **OUTPUT_LAYOUT, "source_keras_model": MODEL_PATH}
    return {
        **{key: f"./{relative}" for key, relative in paths.items()},
        "batch_size": 50,
        "iteration_count": 10,
        "input_tensor_size": INPUT_SIZE,
        "evaluate_image_extension": "jpg",
    }


def build(dest: Path) -> Path:
    """Write the whole project under ``dest``; return its configuration.json."""
    import numpy as np

    rng = np.random.default_rng(0)
    write_photos(dest / INPUT_LAYOUT["dataset_image_dir"], CALIBRATION_IMAGES, rng)
    names = [f"class_{k}" for k in range(CLASSES)]
    per_class = EVALUATION_IMAGES // CLASSES
    for k, name in enumerate(names):
        write_photos(dest / INPUT_LAYOUT["evaluate_image_dir"] / name, per_class, rng, tint=k, first=k * per_class)
    (dest / INPUT_LAYOUT["evaluate_label_file"]).write_text(json.dumps({n: i for i, n in enumerate(names)}) + "\n")
    write_model(dest)
    config = dest / "configuration.json"
    config.write_text(json.dumps(configuration(), indent=2) + "\n")
    return config


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT))
