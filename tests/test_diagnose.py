"""The diagnose stage on small models quantized by MCT for real: the holders are named by the
user's layers (BatchNormalization folded, softmax split off), an unbalanced concatenation and
an outlier channel are found, and a healthy model raises nothing; in a whole job run, results.json
names the concatenation, and ``diagnosis.images`` 0 turns the stage off."""

from __future__ import annotations

import json

import pytest
from conftest import read_config, run_cli, write_config
from diagnosis_support import SIDE, concat_model, diagnosed, images, quantized

pytestmark = pytest.mark.slow


def test_every_holder_is_named_by_the_float_layer_it_quantizes():
    probe, rows, findings = diagnosed(concat_model(1.0))
    assert probe.mapping.unmapped == []
    assert [(p.name, p.kind) for p in probe.mapping.points] == [
        ("image", "input"),
        ("stem_relu", "output"),  # the conv with its folded BatchNormalization feeds a fused ReLU: no holder
        ("branch_big", "output"),
        ("branch_small", "output"),
        ("concat", "output"),
        ("concat_bn", "output"),
        ("pool", "output"),
        ("scores", "pre-activation"),
        ("scores", "output"),
    ]
    assert all(row["sqnr_db"] is not None and row["sqnr_db"] > 20 for row in rows), rows
    assert findings == []


def test_an_unbalanced_concatenation_is_found_by_its_small_inputs_slice():
    _, rows, findings = diagnosed(concat_model(1024.0))
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
    _, rows, findings = diagnosed(_chain_model(scale))
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
    mapping = diagnose.map_points(model, quantized(model))
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
    probe = diagnose.probe(model, quantized(model))
    assert probe.mapping.unmapped == []
    assert [p.name for p in probe.mapping.points] == ["image", "conv", "gap", "scores", "scores"]
    assert [len(layer.inbound_nodes) for layer in base.layers] == [1, 1, 1]
    x = images(16)
    rows = diagnose.table(probe, diagnose.measure(probe, [x]))
    assert all(row["sqnr_db"] is not None and row["sqnr_db"] > 20 for row in rows), rows


def test_a_job_run_names_the_unbalanced_concatenation_in_results_json(project):
    """The real job on a model whose concatenation joins a branch scaled x1024 with a normal one
    (compensated after it, so the float function is the same): results.json's diagnosis names the
    concatenation, by the user's layer name, with the range ratio, and report.html shows it."""
    config = read_config(project)
    concat_model(1024.0, side=config["input_tensor_size"]).save(project / "model" / "concat.keras")
    write_config(project, {**config, "source_keras_model": "model/concat.keras"})
    result = run_cli(cwd=project)
    assert result.returncode == 0, result.stdout[-3000:]
    diagnosis = json.loads((project / "evaluate" / "results" / "results.json").read_text())["diagnosis"]
    assert diagnosis["images"] == 64 and diagnosis["unmapped"] == []
    (finding,) = [f for f in diagnosis["findings"] if f["kind"] == "unbalanced_concatenation"]
    assert finding["layer"] == "concat" and finding["evidence"]["range_ratio"] > 16
    assert [layer["layer"] for layer in diagnosis["layers"]][0] == "image"
    (finished,) = [e for e in result.named("stage.finish") if e["stage"] == "diagnose"]
    assert finished["findings"] == ["unbalanced_concatenation: concat"]
    page = (project / "evaluate" / "results" / "report.html").read_text()
    assert "unbalanced_concatenation" in page


def test_diagnosis_images_0_turns_the_stage_off(project):
    write_config(project, {**read_config(project), "diagnosis": {"images": 0}})
    result = run_cli(cwd=project)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "diagnose" not in {e.get("stage") for e in result.named("stage.start")}
    results = json.loads((project / "evaluate" / "results" / "results.json").read_text())
    assert results["diagnosis"] is None
