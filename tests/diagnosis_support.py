"""Small models quantized by MCT for real, and their diagnosis: shared by the diagnosis tests and
the report's test values."""

from __future__ import annotations

import functools

import numpy as np

SIDE = 16


def images(n: int = 32, low: float = -1.0, high: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, (n, SIDE, SIDE, 3)).astype(np.float32)


def quantized(model, calibration: np.ndarray | None = None, target: tuple[str, str] = ("imx500", "1.0")):
    """MCT's PTQ of ``model`` on ``calibration`` (32 images in [-1, 1] by default) for ``target``."""
    import model_compression_toolkit as mct

    from mctq_job.quantize import target_platform_capabilities

    x = images() if calibration is None else calibration

    def data():
        for start in range(0, len(x), 16):
            yield [x[start : start + 16]]

    quantized, _ = mct.ptq.keras_post_training_quantization(
        model, data, target_platform_capabilities=target_platform_capabilities(*target)
    )
    return quantized


def concat_model(big_scale: float, side: int = SIDE):
    """conv -> [branch_big (x big_scale), branch_small] -> concat -> concat_bn (compensating) -> softmax."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((side, side, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    h = layers.BatchNormalization(name="stem_bn")(h)
    h = layers.ReLU(name="stem_relu")(h)
    big = layers.Conv2D(2, 3, padding="same", activation="relu", name="branch_big")(h)
    small = layers.Conv2D(8, 3, padding="same", activation="relu", name="branch_small")(h)
    c = layers.Concatenate(name="concat")([big, small])
    c = layers.BatchNormalization(name="concat_bn")(c)
    c = layers.GlobalAveragePooling2D(name="pool")(c)
    outputs = layers.Dense(10, activation="softmax", name="scores")(c)
    model = tf.keras.Model(inputs, outputs)
    for bn in ("stem_bn", "concat_bn"):  # BatchNormalization statistics that are not the identity
        layer = model.get_layer(bn)
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([gamma, beta + 0.1, mean + 0.05, var * 0.5])
    if big_scale != 1:
        conv = model.get_layer("branch_big")
        kernel, bias = conv.get_weights()
        conv.set_weights([kernel * big_scale, bias * big_scale])
        bn = model.get_layer("concat_bn")
        gamma, beta, mean, var = bn.get_weights()
        mean[:2] *= big_scale
        var[:2] = big_scale**2 * (var[:2] + bn.epsilon) - bn.epsilon
        bn.set_weights([gamma, beta, mean, var])
    return model


def diagnosed(model, calibration: np.ndarray | None = None, evaluation: np.ndarray | None = None, **options):
    """The diagnosis of ``model`` quantized on ``calibration`` (default: 32 images in [-1, 1]),
    measured on ``evaluation`` (default: 64 other images like them), the calibration images'
    clipping counted too: (probe, table rows, findings)."""
    from mctq_job import diagnose

    calibration = images() if calibration is None else calibration
    probe = diagnose.probe(model, quantized(model, calibration, **options))
    x = images(64, seed=1) if evaluation is None else evaluation
    sums = diagnose.measure(
        probe, (x[i : i + 16] for i in range(0, len(x), 16)), calibration=[calibration[:16], calibration[16:]]
    )
    return probe, diagnose.table(probe, sums), diagnose.findings(probe, sums)


@functools.cache
def diagnosis(big_scale: float = 1024.0):
    """The diagnose stage's value for the concatenation model: an unbalanced one by default."""
    from mctq_job.diagnose import Diagnosis

    probe, rows, found = diagnosed(concat_model(big_scale))
    return Diagnosis(64, 0.5, rows, found, probe.mapping.unmapped)


def hostile_detector(side: int = SIDE, pixels: float = 128.0):
    """A small detector whose head concatenates box corners in pixels (sigmoid x ``pixels``)
    with class scores (0..1) into one tensor, split again before its combined NMS: one 8-bit
    scale for both crushes the scores."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((side, side, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    box = layers.Conv2D(4, 1, activation="sigmoid", name="box_conv")(h)
    box = layers.Rescaling(pixels, name="box_pixels")(box)
    scores = layers.Conv2D(3, 1, activation="sigmoid", name="scores_conv")(h)
    head = layers.Concatenate(name="head")([box, scores])
    head = layers.Reshape((side * side, 7), name="head_flat")(head)
    box_part, score_part = tf.split(head, [4, 3], axis=-1)
    boxes = layers.Rescaling(1 / pixels, name="boxes")(box_part)
    scores = layers.Activation("linear", name="scores")(score_part)
    nms = tf.image.combined_non_max_suppression(
        tf.expand_dims(boxes, 2), scores, 10, 10, 0.5, 0.01, pad_per_class=False, clip_boxes=False
    )
    return tf.keras.Model(inputs, [nms.nmsed_boxes, nms.nmsed_scores, nms.nmsed_classes, nms.valid_detections])
