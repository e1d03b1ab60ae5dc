"""examples/detection.py builds a detection project whose ground truth and model keep issue 17's
contract: a tiny build (few images, one epoch), checked file by file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _example():
    spec = importlib.util.spec_from_file_location("detection_example", ROOT / "examples" / "detection.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


detection = _example()


def test_letterbox_maps_boxes_as_computed_by_hand():
    from PIL import Image

    from mctq_job.config import Preprocessing
    from mctq_job.images import to_array

    # 640x480 -> scale 0.2, 128x96 centred: 16 rows of padding above.
    scene = detection.Scene(Image.new("RGB", (640, 480), (200, 10, 10)), [(100.0, 50.0, 200.0, 150.0)], [0])
    pixels, boxes = detection.model_input(scene, "letterbox")
    assert pixels.shape == (128, 128, 3)
    np.testing.assert_allclose(boxes, [[(50 * 0.2 + 16) / 128, 20 / 128, (200 * 0.2 + 16) / 128, 60 / 128]])
    grey = to_array(Image.new("RGB", (1, 1), (114, 114, 114)), Preprocessing())[0, 0]
    np.testing.assert_allclose(pixels[0, 0], grey)  # the padding
    np.testing.assert_allclose(pixels[16, 0], pixels[111, 127])  # the image itself
    assert not np.allclose(pixels[16, 0], grey)
    _, stretched = detection.model_input(scene, "stretch")
    np.testing.assert_allclose(stretched, [[50 / 480, 100 / 640, 200 / 480, 300 / 640]])


@pytest.mark.slow
def test_tiny_build_keeps_the_contract(tmp_path):
    import tensorflow as tf

    dest = tmp_path / "det"
    config_file = detection.build(dest, n_train=48, epochs=1, n_eval=12, n_calibration=4, log=lambda _: None)
    config = json.loads(config_file.read_text())
    assert config["task"] == "detection" and config["preprocessing"] == {"resize": "letterbox"}
    for key in ("source_keras_model", "evaluate_annotation_file", "evaluate_label_file", "dataset_image_dir"):
        assert (dest / config[key]).exists(), key

    labels = json.loads((dest / config["evaluate_label_file"]).read_text())
    coco = json.loads((dest / config["evaluate_annotation_file"]).read_text())
    assert sorted(labels.values()) == list(range(len(labels)))
    assert {c["name"] for c in coco["categories"]} == set(labels)
    assert any(c["id"] != labels[c["name"]] for c in coco["categories"])  # matched by name, not id
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == 12 and coco["annotations"]
    for image in images.values():
        from PIL import Image

        with Image.open(dest / config["evaluate_image_dir"] / image["file_name"]) as img:
            assert img.size == (image["width"], image["height"]) and img.format == "JPEG"
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        image = images[annotation["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]
    assert len(list((dest / config["dataset_image_dir"]).rglob("*.jpg"))) == 4

    model = tf.keras.models.load_model(dest / config["source_keras_model"], compile=False)  # no custom objects
    boxes, scores, classes, count = model(np.zeros((2, 128, 128, 3), np.float32))
    assert boxes.shape == (2, 100, 4) and scores.shape == classes.shape == (2, 100) and count.shape == (2,)
    nms = [layer for layer in model.layers if "combined_non_max_suppression" in layer.name]
    assert len(nms) == 1
    from edgemdt_cl.keras import custom_layers_scope

    with custom_layers_scope():
        ssd = tf.keras.models.load_model(dest / "model" / "model_ssd.keras", compile=False)
    assert [tuple(o.shape) for o in ssd.outputs] == [(None, 100, 4), (None, 100), (None, 100), (None,)]
