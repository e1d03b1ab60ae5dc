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


def test_a_tensor_clipping_evaluation_images_that_calibration_never_showed_is_a_mismatch():
    """Calibrated on faint images only (pixels in [0, 0.1]), the model meets the whole range
    [-1, 1] in evaluation: the input's calibrated range clips most evaluation values, against
    none of the calibration ones. Calibrated on images like the evaluation ones, nothing is found,
    not even at the softmax, whose confident outputs of 1.0 sit one step above its range's end."""
    faint = images(32, low=0.0, high=0.1)
    _, rows, findings = diagnosed(concat_model(1.0), calibration=faint)
    mismatch = {f.layer: f.evidence for f in findings if f.kind == "calibration_mismatch"}
    assert "image" in mismatch, findings
    assert mismatch["image"]["evaluation_clipped_share"] > 0.5
    assert mismatch["image"]["calibration_clipped_share"] == 0.0
    image = next(row for row in rows if row["layer"] == "image")
    assert mismatch["image"]["evaluation_clipped_share"] == round(image["clipped_share"], 4)

    _, rows, findings = diagnosed(concat_model(1.0))
    assert [f for f in findings if f.kind == "calibration_mismatch"] == [], findings
    assert all(row["calibration_clipped_share"] is not None for row in rows)


def _dense_model(outlier_scale: float):
    """image -> GAP -> hidden Dense(16) with output unit 5's weights scaled, undone in scores."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(2)
    layers = tf.keras.layers
    inputs = tf.keras.Input((SIDE, SIDE, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    h = layers.GlobalAveragePooling2D(name="pool")(h)
    h = layers.Dense(16, name="hidden")(h)
    model = tf.keras.Model(inputs, layers.Dense(10, activation="softmax", name="scores")(layers.ReLU(name="relu")(h)))
    hidden, scores = model.get_layer("hidden"), model.get_layer("scores")
    kernel, bias = hidden.get_weights()
    kernel[:, 5] *= outlier_scale
    bias[5] *= outlier_scale
    hidden.set_weights([kernel, bias])
    kernel2, bias2 = scores.get_weights()
    kernel2[5, :] /= outlier_scale
    scores.set_weights([kernel2, bias2])
    return model


def test_weights_quantized_per_tensor_with_one_dominant_channel_are_found_where_the_target_does_that():
    """MCT's tflite TPC 1.0 quantizes fully connected kernels per tensor (imx500's TPCs quantize
    every kernel per channel): one output unit's weights x64 leave the others a few levels there,
    and nothing to find at imx500 or without the scaling."""
    from mctq_job.quantize import target_platform_capabilities

    tpc = target_platform_capabilities("tflite", "1.0")
    per_tensor = {
        str(op.name)
        for op in tpc.operator_set
        if op.qc_options
        for qc in op.qc_options.quantization_configurations
        for attr, c in (qc.attr_weights_configs_mapping or {}).items()
        if attr == "kernel_attr" and c.enable_weights_quantization and not c.weights_per_channel_threshold
    }
    assert per_tensor == {"FullyConnected"}

    _, _, findings = diagnosed(_dense_model(64.0), target=("tflite", "1.0"))
    weights = [
        (f.layer, f.evidence["channel"], f.evidence["ratio"] > 16)
        for f in findings
        if f.kind == "weight_channel_outlier"
    ]
    assert weights == [("hidden", 5, True)], findings
    assert next(f for f in findings if f.kind == "weight_channel_outlier").evidence["median_channel_levels"] < 8

    for model, target in ((_dense_model(64.0), ("imx500", "1.0")), (_dense_model(1.0), ("tflite", "1.0"))):
        _, _, findings = diagnosed(model, target=target)
        assert [f for f in findings if f.kind == "weight_channel_outlier"] == [], (target, findings)


def test_the_tflite_file_is_compared_where_the_interpreter_exposes_its_tensors(tmp_path):
    """model_quantized.tflite (the job's full-integer export) read tensor by tensor: close to
    MCT's own curve wherever it is exposed; the logits before the softmax, which TFLite's
    SOFTMAX overwrites in place, are not exposed. A file whose weights were damaged after MCT
    (the last layer's kernel negated) departs from MCT's curve at that layer, which the verdict
    blames on the export."""
    from mctq_job import diagnose, tflite_int8, verdict

    model = concat_model(1.0)
    calibration = images()
    mct_model = quantized(model, calibration)

    def compared(tflite_bytes):
        path = tmp_path / "model_quantized.tflite"
        path.write_bytes(tflite_bytes)
        probe = diagnose.probe(model, mct_model)
        tap = diagnose.TFLiteTap(path, probe.mapping, mct_model)
        x = images(64, seed=1)
        return diagnose.table(probe, diagnose.measure(probe, (x[i : i + 16] for i in range(0, 64, 16)), tap))

    rows = compared(tflite_int8.full_integer(mct_model, "float", lambda: iter([[calibration]])))
    by_kind = {(row["layer"], row["kind"]): row for row in rows}
    assert not by_kind[("scores", "pre-activation")]["tflite_compared"]
    exposed = [row for row in rows if row["tflite_compared"]]
    read_back = {row["layer"] for row in rows if row["tflite_compared"]}
    assert {"image", "stem_relu", "concat", "concat_bn", "pool", "scores"} <= read_back, rows
    for row in exposed:
        assert abs(row["tflite_sqnr_db"] - row["sqnr_db"]) < 3, row

    # A file exported from a copy of MCT's model whose scores kernel was negated afterwards:
    # the float and MCT's models are unchanged, the file is not, and the comparison shows where.
    damaged = quantized(model, calibration)
    wrapper = next(
        layer for layer in damaged.layers if getattr(layer, "layer", None) is not None and layer.layer.name == "scores"
    )
    (kernel,) = [variable for name, variable, _ in wrapper.get_weights_vars() if name == "kernel"]
    kernel.assign(-kernel)
    rows = compared(tflite_int8.full_integer(damaged, "float", lambda: iter([[calibration]])))
    by_layer = {row["layer"]: row for row in rows if row["kind"] == "output"}
    assert by_layer["pool"]["tflite_sqnr_db"] > 25
    assert by_layer["scores"]["sqnr_db"] - by_layer["scores"]["tflite_sqnr_db"] > 20, rows
    layers = [(row["layer"], row["sqnr_db"], row["tflite_sqnr_db"]) for row in rows]
    assert verdict.culprits(layers, []) == [("scores", "export")]


def _hostile_digits(project, scale: float = 1024.0) -> None:
    """The project's trained digits model with channel 3 of its first convolution scaled (kernel
    and bias; ReLU and max pooling commute with a positive scale) and undone in the next
    convolution's weights: the float function is unchanged, but the first convolution's one
    activation scale now has to cover a channel `scale` times larger than the others."""
    import tensorflow as tf

    model = tf.keras.models.load_model(str(project / "model" / "saved_model"), compile=False)
    first, second = model.get_layer("conv2d"), model.get_layer("conv2d_1")
    kernel, bias = first.get_weights()
    kernel[..., 3] *= scale
    bias[3] *= scale
    first.set_weights([kernel, bias])
    kernel2, bias2 = second.get_weights()
    kernel2[:, :, 3, :] /= scale
    second.set_weights([kernel2, bias2])
    model.save(project / "model" / "hostile.keras")
    write_config(project, {**read_config(project), "source_keras_model": "model/hostile.keras"})


def test_a_drop_opens_the_report_with_the_drop_its_interval_and_the_culprit(project):
    """The real job on the hostile digits model: results.json's verdict has the drop from the
    per-image predictions with an interval above 0 and blames conv2d, named by the finding; the
    report opens with that sentence and marks it on the SQNR plot."""
    _hostile_digits(project)
    result = run_cli(cwd=project)
    assert result.returncode == 0, result.stdout[-3000:]
    results = json.loads((project / "evaluate" / "results" / "results.json").read_text())
    verdict, models = results["verdict"], results["models"]
    assert verdict["images"] == results["image_count"]
    drop = models["keras"]["top_1_accuracy"] - models["tflite_quantized"]["top_1_accuracy"]
    assert verdict["top_1_drop"] == pytest.approx(drop) and drop > 0.05
    assert verdict["reference_only_correct"] - verdict["candidate_only_correct"] == round(drop * verdict["images"])
    assert 0 < verdict["low"] < drop < verdict["high"] and verdict["measurable"]
    assert verdict["culprits"][0]["layer"] == "conv2d", results["diagnosis"]["findings"]
    page = (project / "evaluate" / "results" / "report.html").read_text()
    body = page.split("<h1>", 1)[1].split("</h1>", 1)[1]
    opening = body.lstrip().split("</p>", 1)[0]
    assert opening.startswith('<p class="verdict">Quantization cost ')
    assert f"{100 * drop:.1f} points of top-1" in opening and "&#x27;conv2d&#x27;" in opening, opening


def test_classes_the_calibration_batches_never_drew_are_named(project):
    """The digits project's calibration folder has one sub-folder per class of the label file;
    one batch of 2 images can hold at most 2 of the 10 classes: the others are named, at the
    model's input. The default draw (all classes) finds nothing: see the healthy run in test_job."""
    write_config(project, {**read_config(project), "batch_size": 2, "iteration_count": 1})
    result = run_cli(cwd=project)
    assert result.returncode == 0, result.stdout[-3000:]
    findings = json.loads((project / "evaluate" / "results" / "results.json").read_text())["diagnosis"]["findings"]
    (missing,) = [f for f in findings if f["kind"] == "calibration_classes_missing"]
    labels = json.loads((project / "dataset" / "labels.json").read_text())
    assert missing["layer"] == "image"
    assert missing["evidence"]["classes"] == len(labels) == 10
    assert missing["evidence"]["classes_drawn"] in (1, 2)
    assert missing["evidence"]["classes_missing"] == 10 - missing["evidence"]["classes_drawn"]
    assert set(missing["evidence"]["missing"]) < set(labels)


@pytest.mark.slow
def test_a_detector_concatenating_pixel_boxes_with_scores_is_found_up_to_its_post_processing():
    """The diagnosis compares a detector up to its post-processing (cut where detection_cut finds
    its inputs): the head's concatenation of pixel-scale boxes (up to ~128) with scores (0..1) is
    named as unbalanced, with the scores' slice losing what the boxes keep."""
    from diagnosis_support import hostile_detector, images, quantized

    from mctq_job import diagnose
    from mctq_job.detection_cut import cut

    model = hostile_detector()
    calibration = images(32, 0.0, 1.0)
    q = quantized(model, calibration)
    probe = diagnose.probe(cut(model), cut(q))
    x = images(64, 0.0, 1.0, seed=1)
    sums = diagnose.measure(
        probe, (x[i : i + 16] for i in range(0, 64, 16)), calibration=[calibration[:16], calibration[16:]]
    )
    found = diagnose.findings(probe, sums)
    unbalanced = [f for f in found if f.kind == "unbalanced_concatenation"]
    assert [f.layer for f in unbalanced] == ["head"], found
    evidence = unbalanced[0].evidence
    assert evidence["smallest_input"] == "scores_conv" and evidence["range_ratio"] > 16
    rows = {row["layer"]: row for row in diagnose.table(probe, sums)}
    slices = {s["input"]: s["sqnr_db"] for s in rows["head"]["slices"]}
    assert slices["scores_conv"] < slices["box_pixels"] - 15, slices
    # the scores after the split inherit the loss: the post-processing's input is where it shows
    assert rows["scores"]["sqnr_db"] < rows["boxes"]["sqnr_db"] - 15, rows["scores"]
