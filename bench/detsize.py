#!/usr/bin/env python3
"""The real-size detection workload, made offline: an SSD-style MobileNetV2 320x320 detector
(random weights; SSD-lite heads on three feature maps; 3 anchors per cell; edgemdt_cl's
``SSDPostProcess`` at the end, the post-processing the IMX500 runs) saved as .keras, 300
camera-size photo-like calibration JPEGs (realsize.py's generator), 40 evaluation JPEGs with
labelled shapes drawn on them and a COCO "instances" file, labels.json and a detection
configuration.json (batch_size 32, iteration_count 10, letterbox).

The weights are random, so the mAP is meaningless: this workload is for time and memory.
Built once under bench-results/work/detsize/; configuration.json is written last, so its
presence means the project is complete.

    .venv/bin/python -m bench.detsize [DEST]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import common, realsize

PROJECT = common.WORK / "detsize"
INPUT_SIZE = 320
CLASS_NAMES = ("disc", "block", "bar", "ring", "square")
CALIBRATION_IMAGES = 300
EVALUATION_IMAGES = 40
BATCH_SIZE = 32
ITERATION_COUNT = 10
MODEL_PATH = "model/ssd_mobilenet_v2_320.keras"
#: (layer of MobileNetV2, anchor side as a fraction of the input) per feature map: strides 16,
#: 32 and an extra stride-64 map, as SSD-lite MobileNetV2 takes them.
FEATURES = (("block_13_expand_relu", 0.2), ("out_relu", 0.45), (None, 0.75))
ASPECT_RATIOS = (1.0, 2.0, 0.5)
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
SCORE_THRESHOLD = 0.05
IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100
LAYOUT = {
    "dataset_image_dir": "dataset/calibration",
    "evaluate_image_dir": "dataset/evaluation",
    "evaluate_label_file": "dataset/labels.json",
    "evaluate_annotation_file": "dataset/instances.json",
}


def ensure(dest: Path = PROJECT) -> Path:
    """``dest``'s configuration.json, after building the project in a fresh process if missing."""
    config = dest / "configuration.json"
    if not config.exists():
        subprocess.run(common.module_command(__spec__.name, str(dest)), env=common.child_env(), check=True)
    return config


def anchors(grids: list[int]) -> Any:
    """(N, 4) normalized (y_min, x_min, y_max, x_max), in the heads' order: map, row, column, ratio."""
    import numpy as np

    found = []
    for grid, (_, side) in zip(grids, FEATURES, strict=True):
        centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        for cy in centres:
            for cx in centres:
                for ratio in ASPECT_RATIOS:
                    h, w = side / np.sqrt(ratio), side * np.sqrt(ratio)
                    found.append((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))
    return np.asarray(found, np.float32)


def build_model() -> Any:
    """MobileNetV2 320x320 (weights=None, no top), SSD-lite heads (depthwise 3x3, then 1x1) on
    three maps, ending in SSDPostProcess."""
    import tensorflow as tf
    from edgemdt_cl.keras import ScoreConverter, SSDPostProcess

    layers = tf.keras.layers
    tf.keras.utils.set_random_seed(0)
    base = tf.keras.applications.MobileNetV2(weights=None, input_shape=(INPUT_SIZE, INPUT_SIZE, 3), include_top=False)
    maps = [base.get_layer(name).output for name, _ in FEATURES if name]
    extra = layers.Conv2D(256, 1, use_bias=False, name="extra_1x1")(maps[-1])
    extra = layers.ReLU(6.0, name="extra_1x1_relu")(layers.BatchNormalization(name="extra_1x1_bn")(extra))
    extra = layers.DepthwiseConv2D(3, 2, padding="same", use_bias=False, name="extra_dw")(extra)
    extra = layers.ReLU(6.0, name="extra_dw_relu")(layers.BatchNormalization(name="extra_dw_bn")(extra))
    extra = layers.Conv2D(512, 1, use_bias=False, name="extra_pw")(extra)
    maps.append(layers.ReLU(6.0, name="extra_pw_relu")(layers.BatchNormalization(name="extra_pw_bn")(extra)))

    def head(x: Any, channels: int, name: str) -> Any:
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = layers.ReLU(6.0, name=f"{name}_relu")(layers.BatchNormalization(name=f"{name}_bn")(x))
        x = layers.Conv2D(len(ASPECT_RATIOS) * channels, 1, name=f"{name}_pw")(x)
        return layers.Reshape((-1, channels), name=f"{name}_flat")(x)

    codes = layers.Concatenate(axis=1, name="box_codes")([head(m, 4, f"box{k}") for k, m in enumerate(maps)])
    logits = layers.Concatenate(axis=1, name="class_logits")(
        [head(m, len(CLASS_NAMES), f"cls{k}") for k, m in enumerate(maps)]
    )
    post = SSDPostProcess(
        anchors=anchors([int(m.shape[1]) for m in maps]),
        scale_factors=SCALE_FACTORS,
        clip_size=(1.0, 1.0),
        score_converter=ScoreConverter.SIGMOID,
        score_threshold=SCORE_THRESHOLD,
        iou_threshold=IOU_THRESHOLD,
        max_detections=MAX_DETECTIONS,
        name="ssd_post_process",
    )
    return tf.keras.Model(base.input, list(post([codes, logits])), name="ssdlite_mobilenet_v2_320")


def write_evaluation(dest: Path, rng: Any) -> dict[str, Any]:
    """Photo-like camera frames with 1-5 labelled shapes each; their COCO instances."""
    from PIL import ImageDraw

    folder = dest / LAYOUT["evaluate_image_dir"]
    folder.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for k in range(EVALUATION_IMAGES):
        size = realsize.FRAME_SIZES[k % len(realsize.FRAME_SIZES)]
        image = realsize.photo(rng, size, tint=k % 3)
        draw = ImageDraw.Draw(image)
        name = f"frame_{k:04d}.jpg"
        for _ in range(rng.integers(1, 6)):
            cls = int(rng.integers(len(CLASS_NAMES)))
            w, h = int(rng.integers(60, size[0] // 3)), int(rng.integers(60, size[1] // 3))
            if CLASS_NAMES[cls] == "bar":
                h = max(20, h // 4)
            x, y = int(rng.integers(0, size[0] - w)), int(rng.integers(0, size[1] - h))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if CLASS_NAMES[cls] in ("disc", "ring") else draw.rectangle
            shape([x, y, x + w - 1, y + h - 1], fill=None if CLASS_NAMES[cls] == "ring" else colour, outline=colour)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": k + 1,
                    "category_id": 101 + cls,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        image.save(folder / name, quality=realsize.JPEG_QUALITY)
        images.append({"id": k + 1, "file_name": name, "width": size[0], "height": size[1]})
    categories = [{"id": 101 + k, "name": name} for k, name in enumerate(CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def configuration() -> dict[str, Any]:
    paths = {
        **LAYOUT,
        "source_keras_model": MODEL_PATH,
        "output_dir": "output",
        "evaluate_result_dir": "evaluate/results",
    }
    return {
        "task": "detection",
        **{key: f"./{relative}" for key, relative in paths.items()},
        "batch_size": BATCH_SIZE,
        "iteration_count": ITERATION_COUNT,
        "input_tensor_size": INPUT_SIZE,
        "evaluate_image_extension": "jpg",
        "preprocessing": {"resize": "letterbox"},
    }


def build(dest: Path) -> Path:
    """Write the whole project under ``dest``; return its configuration.json."""
    import numpy as np

    rng = np.random.default_rng(0)
    realsize.write_photos(dest / LAYOUT["dataset_image_dir"], CALIBRATION_IMAGES, rng)
    coco = write_evaluation(dest, rng)
    (dest / LAYOUT["evaluate_annotation_file"]).write_text(json.dumps(coco) + "\n")
    labels = {name: k for k, name in enumerate(CLASS_NAMES)}
    (dest / LAYOUT["evaluate_label_file"]).write_text(json.dumps(labels) + "\n")
    model = dest / MODEL_PATH
    model.parent.mkdir(parents=True, exist_ok=True)
    build_model().save(str(model))
    config = dest / "configuration.json"
    config.write_text(json.dumps(configuration(), indent=2) + "\n")
    return config


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT))
