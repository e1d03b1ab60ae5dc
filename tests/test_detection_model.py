"""The detection task against real Keras detectors: the outputs it accepts (after
tf.image.combined_non_max_suppression or edgemdt_cl's SSDPostProcess) and the post-processing
it reports, the models it refuses, and a real detector's outputs scored by the tally."""

from __future__ import annotations

import numpy as np
import pytest
from test_detection import check, detection_project

from mctq_job import model as model_stage
from mctq_job.config import Preprocessing
from mctq_job.errors import InputDataError, UnsupportedModelError
from mctq_job.tasks.detection import Annotated, Annotations, Box, Tally

pytestmark = pytest.mark.slow

SIZE = 32  # the detection project's input_tensor_size
#: Two fixed detections, normalized (y_min, x_min, y_max, x_max) of the input, and their class.
FIXED = [([0.25, 0.0, 0.75, 0.5], 0), ([0.5, 0.5, 1.0, 1.0], 1)]


def nms_detector(classes: int = 2, max_total: int = 5, **nms):
    """A real detector ending in tf.image.combined_non_max_suppression whose detections are
    fixed by its biases (zero kernels): box i scores 0.88 (logit 2) for class FIXED[i][1]."""
    import tensorflow as tf

    image = tf.keras.Input((SIZE, SIZE, 3))
    pooled = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Conv2D(4, 3)(image))
    anchors = len(FIXED)
    bias = np.full((anchors, classes), -4.0, np.float32)
    for i, (_, label) in enumerate(FIXED):
        bias[i, label] = 2.0
    fixed = np.array([box for box, _ in FIXED], np.float32).ravel()
    code_layer, logit_layer = tf.keras.layers.Dense(anchors * 4), tf.keras.layers.Dense(anchors * classes)
    coded, logits = code_layer(pooled), logit_layer(pooled)
    code_layer.set_weights([np.zeros((4, anchors * 4)), fixed])
    logit_layer.set_weights([np.zeros((4, anchors * classes)), bias.ravel()])
    boxes = tf.keras.layers.Reshape((anchors, 1, 4))(coded)
    scores = tf.keras.layers.Activation("sigmoid")(tf.keras.layers.Reshape((anchors, classes))(logits))
    found = tf.image.combined_non_max_suppression(
        boxes,
        scores,
        **{
            "max_output_size_per_class": max_total,
            "max_total_size": max_total,
            "iou_threshold": 0.5,
            "score_threshold": 0.3,
            "clip_boxes": False,
            **nms,
        },
    )
    return tf.keras.Model(image, list(found))


def ssd_detector(classes: int = 3):
    """A real detector ending in edgemdt_cl's SSDPostProcess (background class removed)."""
    import tensorflow as tf
    from edgemdt_cl.keras import SSDPostProcess

    image = tf.keras.Input((SIZE, SIZE, 3))
    features = tf.keras.layers.Reshape((16, 4))(tf.keras.layers.Conv2D(4, 3, strides=8, padding="same")(image))
    rel_codes = tf.keras.layers.Dense(4)(features)
    logits = tf.keras.layers.Dense(classes + 1)(features)
    grid = (np.arange(4) + 0.5) / 4
    anchors = np.array([[y - 0.125, x - 0.125, y + 0.125, x + 0.125] for y in grid for x in grid], np.float32)
    post = SSDPostProcess(
        anchors=anchors,
        scale_factors=(10, 10, 5, 5),
        clip_size=(1, 1),
        score_converter="sigmoid",
        score_threshold=0.001,
        iou_threshold=0.6,
        max_detections=20,
        remove_background=True,
    )
    return tf.keras.Model(image, list(post([rel_codes, logits])))


def contract_of(detector, tmp_path, labels=None, **config):
    project = detection_project(tmp_path / "p", **config)
    if labels is not None:
        import json

        (project / "labels.json").write_text(json.dumps(labels))
    return model_stage.contract(detector, check(project))


def test_a_combined_nms_detector_is_accepted_with_its_parameters(tmp_path):
    facts = contract_of(nms_detector(), tmp_path).outputs
    assert facts["max_detections"] == 5
    assert list(facts["detection_outputs"]) == ["boxes", "scores", "classes", "count"]
    post = facts["post_processing"]
    assert post["kind"] == "combined_non_max_suppression" and post["classes"] == 2
    assert (post["max_output_size_per_class"], post["max_total_size"]) == (5, 5)
    assert (post["iou_threshold"], post["score_threshold"], post["clip_boxes"], post["pad_per_class"]) == (
        0.5,
        0.3,
        False,
        False,
    )


def test_the_parameters_are_found_in_a_reloaded_h5_file_too(tmp_path):
    """Keras stores the call's arguments differently once reloaded (the scores move to the
    keyword arguments): the parameters are read the same."""
    import tensorflow as tf

    path = tmp_path / "detector.h5"
    nms_detector(max_total=7).save(path)
    reloaded = tf.keras.models.load_model(path, compile=False)
    post = contract_of(reloaded, tmp_path).outputs["post_processing"]
    assert post["classes"] == 2 and post["max_total_size"] == 7 and post["score_threshold"] == 0.3


def test_an_ssd_post_process_detector_is_accepted_with_its_parameters(tmp_path):
    facts = contract_of(ssd_detector(), tmp_path).outputs
    post = facts["post_processing"]
    assert facts["max_detections"] == 20
    assert post["kind"] == "SSDPostProcess" and post["classes"] == 3 and post["anchors"] == 16
    assert (post["score_threshold"], post["iou_threshold"], post["remove_background"]) == (0.001, 0.6, True)


@pytest.mark.parametrize(
    ("nms", "named"),
    [
        ({"clip_boxes": True}, "clip_boxes=True"),
        ({"pad_per_class": True}, "pad_per_class=True"),
        ({"max_output_size_per_class": 3}, "max_output_size_per_class=3 with max_total_size=5"),
        ({"max_output_size_per_class": 600, "max_total_size": 600}, "max_total_size=600"),
    ],
)
def test_with_the_imx500_package_an_nms_the_converter_refuses_is_named(tmp_path, nms, named):
    """The converter's conditions on a combined NMS, known before any work; the same model
    without the package is accepted."""
    package = {"imx500": {"package": True}}
    with pytest.raises(UnsupportedModelError) as refused:
        contract_of(nms_detector(**nms), tmp_path / "package", **package)
    message = refused.value.message
    assert message.startswith("key 'imx500': the model's tf.image.combined_non_max_suppression (layer ")
    assert f"has {named}, which Sony's IMX500 converter refuses" in message
    assert "accepted: clip_boxes=False, pad_per_class=False, max_output_size_per_class equal to" in message
    assert contract_of(nms_detector(**nms), tmp_path / "plain").outputs["post_processing"] is not None
    assert contract_of(nms_detector(), tmp_path / "fits", **package).outputs["max_detections"] == 5


def test_a_label_beyond_the_detectors_classes_is_named(tmp_path):
    with pytest.raises(InputDataError, match=r"id 2 of 'bird' is beyond the 2 classes .*accepted ids: 0 to 1"):
        contract_of(nms_detector(), tmp_path, labels={"cat": 0, "dog": 1, "bird": 2})


def test_a_classifier_is_not_a_detector(tmp_path):
    import tensorflow as tf

    image = tf.keras.Input((SIZE, SIZE, 3))
    classifier = tf.keras.Model(image, tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling2D()(image)))
    with pytest.raises(UnsupportedModelError, match=r"has 1 output\(s\) .*reads four outputs, in this order: boxes"):
        contract_of(classifier, tmp_path)


def test_outputs_in_another_order_are_refused_naming_the_output(tmp_path):
    import tensorflow as tf

    detector = nms_detector()
    boxes, scores, classes, count = detector.outputs
    shuffled = tf.keras.Model(detector.inputs, [scores, boxes, classes, count])
    with pytest.raises(UnsupportedModelError) as refused:
        contract_of(shuffled, tmp_path)
    name = shuffled.output_names[0]
    assert f"output {name!r} has shape (None, 5), which cannot be the boxes" in refused.value.message


def test_a_real_detectors_outputs_are_mapped_and_scored(tmp_path):
    """The detector's own outputs (model.predict's list of four arrays) given to the tally as
    they come: its two fixed boxes, letterboxed, land where computed by hand in the pixels of a
    64x32 and a 32x64 image, so every figure is 1."""
    detector = nms_detector()
    # a.jpg 64x32 -> 32x16 at top 8, x2: box 0 (input y 8..24, x 0..16) -> [0, 0, 32, 32];
    #   box 1 (y 16..32, x 16..32) -> x 32..64, y 16..48 clipped to 32 -> [32, 16, 32, 16]
    # b.jpg 32x64 -> 16x32 at left 8, x2: box 0 -> x -16..16 clipped to 0..16, y 16..48 -> [0, 16, 16, 32];
    #   box 1 -> x 16..48 clipped to 32, y 32..64 -> [16, 32, 16, 32]
    a = (Box(0, 0, 0, 32, 32), Box(1, 32, 16, 32, 16))
    b = (Box(0, 0, 16, 16, 32), Box(1, 16, 32, 16, 32))
    truth = Annotations(
        {"cat": 0, "dog": 1},
        (Annotated(tmp_path / "a.jpg", (64, 32), a), Annotated(tmp_path / "b.jpg", (32, 64), b)),
        "coco",
        SIZE,
        Preprocessing(resize="letterbox"),
    )
    outputs = detector.predict(np.zeros((2, SIZE, SIZE, 3), np.float32), verbose=0)
    assert [o.shape for o in outputs] == [(2, 5, 4), (2, 5), (2, 5), (2,)]
    tally = Tally(truth, ["keras"])
    tally.add("keras", outputs, np.array([0, 1]))
    rows = tally.detections["keras"].rows()
    placed = sorted((int(r[0]), int(r[6]), *np.round(r[1:5], 4)) for r in rows)
    expected = sorted(
        (i, box.label, box.x, box.y, box.width, box.height) for i, boxes in enumerate((a, b)) for box in boxes
    )
    assert placed == expected
    found = tally.metrics("keras")
    assert found["map_50_95"] == found["map_50"] == found["ar_100"] == 1.0
    assert found["per_class_ap"] == {"cat": 1.0, "dog": 1.0}


@pytest.mark.parametrize("make", [nms_detector, ssd_detector], ids=["combined NMS", "SSDPostProcess"])
def test_the_cut_float_file_keeps_its_named_outputs_and_the_keras_trackables_bytes(make):
    """model.tflite of a detector is its cut converted with a variables-only tf.Module as the
    converter's trackable object (tflite_int8.concrete_converter): the same bytes as with the
    cut Keras model itself, and the signature names both outputs after the post-processing's
    inputs."""
    import tensorflow as tf

    from mctq_job.detection_cut import OUTPUTS, convert_float, cut

    cut_model = cut(make())
    data = convert_float(cut_model)
    spec = [tf.TensorSpec(t.shape, tf.float32) for t in cut_model.inputs]
    function = tf.function(lambda x: cut_model(x, training=False)).get_concrete_function(*spec)
    assert data == tf.lite.TFLiteConverter.from_concrete_functions([function], cut_model).convert()
    outputs = tf.lite.Interpreter(model_content=data).get_signature_list()["serving_default"]["outputs"]
    assert sorted(outputs) in [sorted(names) for names in OUTPUTS.values()]
