#!/usr/bin/env python3
"""Build a project whose model MCT's default quantization breaks, to see the diagnosis and the
recovery at work.

The digits example (examples/digits.py) with another model: a small classifier whose
concatenation joins a 1-channel branch scaled x1024 with a normal 16-channel one, the scale
undone in the BatchNormalization after it. The float model is unchanged by the scaling; one
8-bit scale for the whole concatenation crushes the small branch. The configuration has a
5-point gate (``max_top1_drop``): run as written, the job exits 8 and report.html names the
concatenation; with ``--recover`` the configuration also holds ``recover`` and the job
re-quantizes until the gate passes.

    <dest>/configuration.json
    <dest>/model/hostile.keras
    <dest>/dataset/...            as in examples/digits.py

    python examples/hostile.py DEST [--recover]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCALE = 1024.0
BIG_CHANNELS = 1
GATE = 0.05
RECOVER = {"max_attempts": 6, "max_seconds": 600}


def _digits() -> Any:
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hostile_model(
    project: Path, scale: float = SCALE, epochs: int = 12, seed: int = 2, smooth_big_branch: bool = False
) -> Any:
    """Trained on the project's calibration images (the job's own preprocessing), then made
    hostile: ``branch_big``'s output x ``scale`` (ReLU is positively homogeneous), undone in
    ``concat_bn``'s moving mean and variance."""
    import numpy as np
    import tensorflow as tf

    from mctq_job.config import Preprocessing
    from mctq_job.images import load_batch

    config = json.loads((project / "configuration.json").read_text())
    labels = json.loads((project / config["evaluate_label_file"]).read_text())
    root = project / config["dataset_image_dir"]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    y = np.asarray([labels[p.relative_to(root).parts[0]] for p in files])
    side = config["input_tensor_size"]
    x = load_batch(files, side, Preprocessing()).pixels
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    inputs = tf.keras.Input((side, side, 3), name="image")
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    h = layers.MaxPool2D(name="pool1")(h)
    smooth = {
        "trainable": False,
        "kernel_initializer": tf.keras.initializers.Constant(1 / (9 * 16)),
        "bias_initializer": tf.keras.initializers.Constant(0.1),
    }
    big = layers.Conv2D(
        BIG_CHANNELS,
        3,
        padding="same",
        activation="relu",
        name="branch_big",
        **(smooth if smooth_big_branch else {}),
    )(h)
    small = layers.Conv2D(16, 3, padding="same", activation="relu", name="branch_small")(h)
    c = layers.Concatenate(name="concat")([big, small])
    c = layers.BatchNormalization(name="concat_bn")(c)
    c = layers.ReLU(name="concat_relu")(c)
    c = layers.MaxPool2D(name="pool2")(c)
    c = layers.Flatten(name="flatten")(c)
    c = layers.Dense(64, activation="relu", name="dense")(c)
    outputs = layers.Dense(len(labels), activation="softmax", name="scores")(c)
    model = tf.keras.Model(inputs, outputs, name="hostile_digits")
    model.compile(tf.keras.optimizers.Adam(0.003), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    conv = model.get_layer("branch_big")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel * scale, bias * scale])
    bn = model.get_layer("concat_bn")
    gamma, beta, mean, var = bn.get_weights()
    mean[:BIG_CHANNELS] *= scale
    var[:BIG_CHANNELS] = scale**2 * (var[:BIG_CHANNELS] + bn.epsilon) - bn.epsilon
    bn.set_weights([gamma, beta, mean, var])
    return model


def make_hostile(project: Path, recover: bool = False) -> Path:
    """Replace the model of a digits project by the hostile one, with a 5-point gate (and
    ``recover`` if asked); return its configuration.json."""
    hostile_model(project).save(project / "model" / "hostile.keras")
    config_file = project / "configuration.json"
    config = json.loads(config_file.read_text())
    config.update(source_keras_model="./model/hostile.keras", max_top1_drop=GATE)
    if recover:
        config["recover"] = RECOVER
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return config_file


def build(dest: Path, recover: bool = False) -> Path:
    """The whole project under ``dest`` (the digits images the tests use: 700 of them)."""
    _digits().build(dest, model_format="keras", limit=700, epochs=15, batch_size=16, iteration_count=6)
    (dest / "model" / "model.keras").unlink()  # the digits model, replaced by the hostile one
    return make_hostile(dest, recover)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--recover", action="store_true", help=f"add recover: {json.dumps(RECOVER)}")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"hostile example project ready: {build(args.dest, args.recover)}")


if __name__ == "__main__":
    main()
