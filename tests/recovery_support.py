"""The hostile model of issue 18 for the recovery tests: a digits classifier whose
concatenation joins a 1-channel branch scaled x1024 with a normal 16-channel one, compensated
in the BatchNormalization after it, so the float function is unchanged while MCT's default
8-bit quantization crushes the small branch."""

from __future__ import annotations

import json
from pathlib import Path

SCALE = 1024.0
BIG_CHANNELS = 1


def hostile_model(
    project: Path, scale: float = SCALE, epochs: int = 12, seed: int = 2, smooth_big_branch: bool = False
):
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
