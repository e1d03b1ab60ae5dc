"""The diagnosis prototype (issue 18) on small models quantized by MCT for real: the holders are
named by the user's layers (BatchNormalization folded, softmax split off), an unbalanced
concatenation and an outlier channel are found, and a healthy model raises nothing."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SIDE = 16


def _images(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, SIDE, SIDE, 3)).astype(np.float32)


def _quantized(model):
    import model_compression_toolkit as mct

    from mctq_job.quantize import target_platform_capabilities

    x = _images()

    def data():
        for start in range(0, len(x), 16):
            yield [x[start : start + 16]]

    quantized, _ = mct.ptq.keras_post_training_quantization(
        model, data, target_platform_capabilities=target_platform_capabilities("imx500", "1.0")
    )
    return quantized


def _concat_model(big_scale: float):
    """conv -> [branch_big (x big_scale), branch_small] -> concat -> concat_bn (compensating) -> softmax."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((SIDE, SIDE, 3), name="image")
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


def _diagnosed(model):
    from mctq_job import diagnose

    quantized = _quantized(model)
    probe = diagnose.probe(model, quantized)
    x = _images(64)
    sums = diagnose.measure(probe, (x[i : i + 16] for i in range(0, 64, 16)))
    return probe, diagnose.table(probe, sums), diagnose.findings(probe, sums)


def test_every_holder_is_named_by_the_float_layer_it_quantizes():
    probe, rows, findings = _diagnosed(_concat_model(1.0))
    assert probe.mapping.unmapped == []
    assert [(p.name, p.kind) for p in probe.mapping.points] == [
        ("image", "input"),
        ("stem_relu", "output"),  # the conv with its folded BatchNormalization feeds a fused ReLU: no holder
        ("branch_big", "output"),
        ("branch_small", "output"),
        ("concat", "output"),
        ("concat_bn", "output"),
        ("pool", "output"),
        ("scores (before softmax)", "pre-activation"),
        ("scores", "output"),
    ]
    assert all(row["sqnr_db"] is not None and row["sqnr_db"] > 20 for row in rows), rows
    assert findings == []


def test_an_unbalanced_concatenation_is_found_by_its_small_inputs_slice():
    _, rows, findings = _diagnosed(_concat_model(1024.0))
    concat = next(row for row in rows if row["layer"] == "concat")
    slices = {s["input"]: s for s in concat["slices"]}
    # The whole tensor looks fine: the big branch dominates its power; the small one is crushed.
    assert concat["sqnr_db"] > 25
    assert slices["branch_small"]["sqnr_db"] is None or slices["branch_small"]["sqnr_db"] < 5
    unbalanced = [f for f in findings if f.kind == "unbalanced_concatenation"]
    assert [f.layer for f in unbalanced] == ["concat"]
    assert unbalanced[0].evidence["smallest_input"] == "branch_small"
    assert unbalanced[0].evidence["range_ratio"] > 100


def _chain_model(outlier_scale: float):
    """conv1 (16 channels, ReLU) -> conv2 -> pool -> dense; channel 3 of conv1 scaled, undone in conv2."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1)
    layers = tf.keras.layers
    inputs = tf.keras.Input((SIDE, SIDE, 3), name="image")
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.GlobalAveragePooling2D(name="pool")(h)
    model = tf.keras.Model(inputs, layers.Dense(10, name="scores")(h))
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    kernel, bias = conv1.get_weights()
    kernel[..., 3] *= outlier_scale
    bias[3] += 0.01 * outlier_scale
    conv1.set_weights([kernel, bias])
    kernel2, bias2 = conv2.get_weights()
    kernel2[:, :, 3, :] /= outlier_scale
    conv2.set_weights([kernel2, bias2])
    return model


@pytest.mark.parametrize("scale", [1.0, 64.0])
def test_an_outlier_channel_is_found_and_only_there(scale):
    _, rows, findings = _diagnosed(_chain_model(scale))
    found = [(f.kind, f.layer, f.evidence["channel"]) for f in findings]
    assert found == ([("outlier_channel", "conv1", 3)] if scale > 1 else []), rows


def test_separable_and_forward_folded_layers_are_named_by_the_float_layer():
    """MCT 2.6.1 splits SeparableConv2D into '<name>_dw' / '<name>_pw' and folds a BatchNormalization
    forward into the convolution after it as '<bn>_<conv>'; the depthwise half has no float tensor."""
    import tensorflow as tf

    from mctq_job import diagnose

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((SIDE, SIDE, 3), name="image")
    h = layers.SeparableConv2D(8, 3, activation="relu", name="sep")(inputs)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.Conv2D(8, 1, name="conv")(h)
    model = tf.keras.Model(inputs, layers.Dense(10, name="scores")(layers.GlobalAveragePooling2D(name="gap")(h)))
    mapping = diagnose.map_points(model, _quantized(model))
    assert [(p.name, p.kind) for p in mapping.points] == [
        ("image", "input"),
        ("sep", "output"),
        ("conv", "folded"),
        ("gap", "output"),
        ("scores", "output"),
    ]
    assert [reason for _, reason in mapping.unmapped] == [
        "MCT's layer 'sep_dw' has no float layer of that name (nor a folded BatchNormalization)"
    ]


def test_a_nested_model_is_inlined_as_mct_reads_it_without_touching_the_users_model():
    import tensorflow as tf

    from mctq_job import diagnose

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inner = tf.keras.Input((SIDE, SIDE, 3), name="inner_image")
    base = tf.keras.Model(
        inner, layers.GlobalAveragePooling2D(name="gap")(layers.Conv2D(8, 3, activation="relu", name="conv")(inner))
    )
    outer = tf.keras.Input((SIDE, SIDE, 3), name="image")
    model = tf.keras.Model(outer, layers.Dense(10, activation="softmax", name="scores")(base(outer)))
    probe = diagnose.probe(model, _quantized(model))
    assert probe.mapping.unmapped == []
    assert [p.name for p in probe.mapping.points] == ["image", "conv", "gap", "scores (before softmax)", "scores"]
    assert [len(layer.inbound_nodes) for layer in base.layers] == [1, 1, 1]
    x = _images(16)
    rows = diagnose.table(probe, diagnose.measure(probe, [x]))
    assert all(row["sqnr_db"] is not None and row["sqnr_db"] > 20 for row in rows), rows
