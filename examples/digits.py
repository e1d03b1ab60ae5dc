#!/usr/bin/env python3
"""Build a small, real example project for mctq-job in seconds.

scikit-learn ships the UCI handwritten digits (1,797 images, 8x8 grey levels). They are
written out as real image files in the layout the AITRIOS notebook expected, a small Keras
CNN is trained on them, and an unchanged-style AITRIOS configuration.json is written:

    <dest>/configuration.json
    <dest>/model/saved_model/            (or model/model.h5 / model.keras)
    <dest>/dataset/training/<class>/...  calibration images (png and jpg, mixed case)
    <dest>/dataset/validation/<class>/   evaluation images (.jpg)
    <dest>/dataset/labels.json

    python examples/digits.py DEST [--model-format savedmodel|h5|keras]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SIDE = 40  # pixels of the written files
INPUT_SIZE = 32  # the model's input side


def write_images(
    dest: Path, eval_fraction: float = 0.2, seed: int = 0, limit: int | None = None
) -> tuple[list[Path], list[int]]:
    """Write training and validation images; return the training files and their labels."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[:limit]
    n_eval = int(len(order) * eval_fraction)
    train_files, train_labels = [], []
    for rank, index in enumerate(order):
        label = int(digits.target[index])
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
        img = Image.fromarray(pixels, mode="L").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
        if rank < n_eval:
            path = dest / "dataset" / "validation" / CLASS_NAMES[label] / f"digit_{index:04d}.jpg"
        else:
            # Calibration files in nested folders and mixed formats and case, as real sets are.
            suffix = (".png", ".jpg", ".PNG", ".jpeg")[rank % 4]
            path = (
                dest / "dataset" / "training" / CLASS_NAMES[label] / f"batch{rank % 3}" / f"digit_{index:04d}{suffix}"
            )
            train_files.append(path)
            train_labels.append(label)
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = img.convert("RGB")
        rgb.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else rgb.save(path, format="PNG")
    return train_files, train_labels


def train_model(files: list[Path], labels: list[int], epochs: int = 12, seed: int = 0):
    """A small CNN trained on exactly the pixels mctq-job's preprocessing produces."""
    import numpy as np
    import tensorflow as tf

    from mctq_job.config import Preprocessing
    from mctq_job.images import load_batch

    tf.keras.utils.set_random_seed(seed)
    x = load_batch(files, INPUT_SIZE, Preprocessing()).pixels
    y = np.asarray(labels)
    inputs = tf.keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    h = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = tf.keras.layers.MaxPool2D()(h)
    h = tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = tf.keras.layers.MaxPool2D()(h)
    h = tf.keras.layers.Flatten()(h)
    h = tf.keras.layers.Dense(64, activation="relu")(h)
    outputs = tf.keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="scores")(h)
    model = tf.keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(tf.keras.optimizers.Adam(0.003), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model


def save_model(model, dest: Path, model_format: str) -> str:
    """Save as the notebook's users did; return the path relative to ``dest``."""
    relative = {"savedmodel": "model/saved_model", "h5": "model/model.h5", "keras": "model/model.keras"}[model_format]
    (dest / relative).parent.mkdir(parents=True, exist_ok=True)
    model.save(str(dest / relative))
    return relative


def configuration(model_path: str, batch_size: int = 32, iteration_count: int = 10) -> dict:
    """An AITRIOS-style configuration.json: the ten keys, relative paths."""
    return {
        "source_keras_model": f"./{model_path}",
        "dataset_image_dir": "./dataset/training",
        "batch_size": batch_size,
        "input_tensor_size": INPUT_SIZE,
        "iteration_count": iteration_count,
        "output_dir": "./output",
        "evaluate_image_dir": "./dataset/validation",
        "evaluate_image_extension": "jpg",
        "evaluate_label_file": "./dataset/labels.json",
        "evaluate_result_dir": "./evaluate/results",
    }


def build(
    dest: Path,
    model_format: str = "savedmodel",
    limit: int | None = None,
    epochs: int = 12,
    batch_size: int = 32,
    iteration_count: int = 10,
) -> Path:
    """Create the whole example project under ``dest``; return its configuration.json."""
    dest.mkdir(parents=True, exist_ok=True)
    files, labels = write_images(dest, limit=limit)
    (dest / "dataset" / "labels.json").write_text(json.dumps({n: i for i, n in enumerate(CLASS_NAMES)}) + "\n")
    model = train_model(files, labels, epochs=epochs)
    model_path = save_model(model, dest, model_format)
    config = dest / "configuration.json"
    config.write_text(json.dumps(configuration(model_path, batch_size, iteration_count), indent=2) + "\n")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--model-format", choices=("savedmodel", "h5", "keras"), default="savedmodel")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = build(args.dest, args.model_format, epochs=args.epochs)
    print(f"example project ready: {config}")


if __name__ == "__main__":
    main()
