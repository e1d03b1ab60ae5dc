#!/usr/bin/env python3
"""Build a small, real object-detection project for mctq-job in about two minutes, offline.

Objects come from data that ships in installed packages or are drawn: circles and triangles
(Pillow), faces (scikit-image's LFW subset) and handwritten digits on paper cards
(scikit-learn's digits). They are pasted on random crops of the photographs scikit-learn and
scikit-image ship, written as camera-sized JPEGs (640x480, some 480x640 and 800x450), and
described by a COCO "instances" file. A small single-scale detector (YOLOv5-style box
decoding: sigmoid, multiply, add; no exp) is trained on scenes made the same way and saved
ending in its post-processing:

    <dest>/configuration.json
    <dest>/model/model.h5                  tf.image.combined_non_max_suppression at the end
    <dest>/model/model_ssd.keras           the same network ending in edgemdt_cl's SSDPostProcess
    <dest>/dataset/calibration/...         calibration images (no annotations)
    <dest>/dataset/evaluation/<day|dusk>/  evaluation images (.jpg)
    <dest>/dataset/instances.json          COCO ground truth, file_name relative to evaluation/
    <dest>/dataset/labels.json             {"class name": model class index}

    python examples/detection.py DEST [--resize letterbox|stretch] [--no-ssd]

The model's outputs are the post-processed detections: boxes [B, N, 4] as normalized
(y_min, x_min, y_max, x_max) relative to the model input, scores [B, N], classes [B, N] and
the number of valid detections [B]. Both models load without custom objects except
model_ssd.keras, which needs ``edgemdt_cl.keras.custom_layers_scope()``.

Letterbox here means: scale the image to fit the square, centre it, fill the rest with grey
114 (the YOLO family's way). Training varies the fill and the offset, so a job that pads
elsewhere or with another grey still sees a model that works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Model class index = position; COCO category ids are different on purpose (matched by name).
CLASS_NAMES = ["circle", "triangle", "face", "digit"]
COCO_CATEGORY_IDS = {"circle": 7, "triangle": 3, "face": 11, "digit": 5}
INPUT_SIZE = 128  # the model's input side
STRIDE = 8  # one prediction per 8x8 input cell: a 16x16 grid
GRID = INPUT_SIZE // STRIDE
ANCHOR = 16.0  # input pixels; predicted sides are (2 sigmoid(t))^2 * ANCHOR: 0..64 px
SSD_ANCHOR = 24.0  # input pixels, the square anchor of each cell for the SSD variant
SSD_SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
PAD_VALUE = 114
#: Post-processing parameters, within imxconv-tf's conditions for combined NMS.
MAX_DETECTIONS = 100
IOU_THRESHOLD = 0.5
SCORE_THRESHOLD = 0.01
#: (width, height) of the written images and how often each occurs.
CAMERA_SIZES = (((640, 480), 0.7), ((480, 640), 0.15), ((800, 450), 0.15))
OBJECT_SIDE = (48, 190)  # object sides in pixels of a 640x480 image

SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
SKIMAGE_PHOTOS = (
    "coffee.png",
    "chelsea.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "ihc.png",
)


# --- Scenes -------------------------------------------------------------------------------


@dataclass
class Scene:
    image: Any  # PIL RGB image
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # x, y, w, h in pixels
    classes: list[int] = field(default_factory=list)  # model class indices


class SceneMaker:
    """Photographs as backgrounds, objects from packaged data or drawn, all from one generator."""

    def __init__(self, seed: int):
        import numpy as np
        import skimage.data
        import sklearn.datasets
        from PIL import Image

        self.rng = np.random.default_rng(seed)
        sk_dir = Path(sklearn.datasets.__file__).parent / "images"
        ski_dir = Path(skimage.data.__file__).parent
        files = [sk_dir / name for name in SKLEARN_PHOTOS] + [ski_dir / name for name in SKIMAGE_PHOTOS]
        self.photos = [Image.open(path).convert("RGB") for path in files]
        self.faces = skimage.data.lfw_subset()[:100]  # the first 100 are faces, the rest are not
        digits = sklearn.datasets.load_digits()
        self.digits = digits.images / 16.0

    def camera_size(self) -> tuple[int, int]:
        sizes, weights = zip(*CAMERA_SIZES, strict=True)
        return sizes[self.rng.choice(len(sizes), p=weights)]

    def background(self, size: tuple[int, int]) -> Any:
        """A random crop of a random photograph, flipped, scaled and lit differently."""
        from PIL import Image, ImageEnhance

        photo = self.photos[self.rng.integers(len(self.photos))]
        width, height = size
        aspect = width / height
        crop_w = min(photo.width, photo.height * aspect) * self.rng.uniform(0.45, 1.0)
        crop_h = crop_w / aspect
        left = self.rng.uniform(0, photo.width - crop_w)
        top = self.rng.uniform(0, photo.height - crop_h)
        img = photo.resize(size, Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(self.rng.uniform(0.6, 1.3))
        return ImageEnhance.Color(img).enhance(self.rng.uniform(0.5, 1.4))

    def scene(self, size: tuple[int, int] | None = None, dusk: bool = False) -> Scene:
        from PIL import ImageEnhance

        size = size or self.camera_size()
        scene = Scene(self.background(size))
        count = self.rng.choice([0, 1, 2, 3, 4, 5], p=[0.08, 0.22, 0.3, 0.2, 0.12, 0.08])
        scale = min(size) / 480
        for _ in range(count):
            cls = int(self.rng.integers(len(CLASS_NAMES)))
            side = self.rng.uniform(*OBJECT_SIDE) * scale
            self._paste(scene, cls, side)
        if dusk:
            scene.image = ImageEnhance.Brightness(scene.image).enhance(0.55)
        return scene

    def _paste(self, scene: Scene, cls: int, side: float) -> None:
        """Paste one object where it overlaps earlier ones by little; give up after a few tries."""
        patch, mask, box = getattr(self, f"_{CLASS_NAMES[cls]}")(side)
        width, height = scene.image.size
        for _ in range(10):
            x = int(self.rng.integers(0, max(1, width - patch.width)))
            y = int(self.rng.integers(0, max(1, height - patch.height)))
            placed = (x + box[0], y + box[1], box[2], box[3])
            if all(_iou(placed, other) < 0.1 for other in scene.boxes):
                scene.image.paste(patch, (x, y), mask)
                scene.boxes.append(placed)
                scene.classes.append(cls)
                return

    def _colour(self) -> tuple[int, int, int]:
        import colorsys

        r, g, b = colorsys.hsv_to_rgb(self.rng.random(), self.rng.uniform(0.5, 1.0), self.rng.uniform(0.45, 1.0))
        return int(r * 255), int(g * 255), int(b * 255)

    def _drawn(self, side: float, points: list[tuple[float, float]] | None) -> tuple[Any, Any, tuple]:
        """A filled circle/ellipse (points None) or polygon in a random colour, its mask and box."""
        from PIL import Image, ImageDraw

        n = int(side) + 4
        mask = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(mask)
        if points is None:
            aspect = self.rng.uniform(0.75, 1.33)
            w, h = (side, side / aspect) if aspect > 1 else (side * aspect, side)
            draw.ellipse(((n - w) / 2, (n - h) / 2, (n + w) / 2, (n + h) / 2), fill=255)
        else:
            draw.polygon(points, fill=255)
        colour = self._colour()
        patch = Image.new("RGB", (n, n), colour)
        if self.rng.random() < 0.5:  # a darker rim, as printed signs have
            patch.paste(tuple(int(c * 0.4) for c in colour), (0, 0), _edge(mask))
        left, top, right, bottom = mask.getbbox() or (0, 0, n, n)
        return patch, mask, (left, top, right - left, bottom - top)

    def _circle(self, side: float):
        return self._drawn(side, None)

    def _triangle(self, side: float):
        import math

        n = int(side) + 4
        angle = self.rng.uniform(0, 2 * math.pi)
        radius = side / 2
        squash = self.rng.uniform(0.8, 1.0)
        points = [
            (
                n / 2 + radius * math.cos(angle + k * 2 * math.pi / 3),
                n / 2 + squash * radius * math.sin(angle + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
        return self._drawn(side, points)

    def _face(self, side: float):
        import numpy as np
        from PIL import Image

        face = self.faces[self.rng.integers(len(self.faces))]
        grey = Image.fromarray((face * 255).astype(np.uint8), mode="L")
        tint = self._colour()
        w, h = int(side * self.rng.uniform(0.8, 0.95)), int(side)
        patch = Image.merge("RGB", [grey.point(lambda v, t=t: int(v * (0.55 + 0.45 * t / 255))) for t in tint])
        patch = patch.resize((w, h), Image.Resampling.BILINEAR)
        return patch, None, (0, 0, w, h)

    def _digit(self, side: float):
        import numpy as np
        from PIL import Image

        ink = self.digits[self.rng.integers(len(self.digits))]
        paper = np.clip(0.92 - 0.85 * ink, 0, 1)
        grey = Image.fromarray((paper * 255).astype(np.uint8), mode="L")
        w, h = int(side * self.rng.uniform(0.7, 0.9)), int(side)
        patch = grey.resize((w, h), Image.Resampling.BILINEAR).convert("RGB")
        return patch, None, (0, 0, w, h)


def _edge(mask: Any) -> Any:
    from PIL import ImageChops, ImageFilter

    return ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(5)))


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# --- Preprocessing (what the job does: resize, then mctq_job.images.to_array) ----------------


def letterbox(img: Any, size: int, offset: tuple[float, float] = (0.5, 0.5), fill: int = PAD_VALUE):
    """Scale ``img`` to fit a ``size`` square and pad; return (image, scale, pad_x, pad_y).

    ``offset`` (0.5, 0.5) centres the image, as the job does; training varies it."""
    from PIL import Image

    scale = size / max(img.size)
    new_w, new_h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    pad_x, pad_y = int((size - new_w) * offset[0]), int((size - new_h) * offset[1])
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(img.resize((new_w, new_h), Image.Resampling.BILINEAR), (pad_x, pad_y))
    return canvas, scale, pad_x, pad_y


def model_input(scene: Scene, resize: str, rng: Any | None = None) -> tuple[Any, Any]:
    """(pixels HxWx3 as the job feeds them, boxes [K, 4] as normalized y1, x1, y2, x2)."""
    import numpy as np

    from mctq_job.config import Preprocessing
    from mctq_job.images import to_array

    img = scene.image
    boxes = np.asarray(scene.boxes, np.float32).reshape(-1, 4)
    if resize == "stretch":
        from PIL import Image

        square = img.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        sx, sy, px, py = INPUT_SIZE / img.width, INPUT_SIZE / img.height, 0.0, 0.0
    else:
        offset = (0.5, 0.5) if rng is None else tuple(rng.uniform(0, 1, 2))
        fill = PAD_VALUE if rng is None else int(rng.choice([0, PAD_VALUE, 128, PAD_VALUE]))
        square, scale, px, py = letterbox(img, INPUT_SIZE, offset, fill)
        sx = sy = scale
    x1, y1 = boxes[:, 0] * sx + px, boxes[:, 1] * sy + py
    x2, y2 = x1 + boxes[:, 2] * sx, y1 + boxes[:, 3] * sy
    normalized = np.stack([y1, x1, y2, x2], axis=1) / INPUT_SIZE
    return to_array(square, Preprocessing()), normalized


# --- The detector ---------------------------------------------------------------------------


def _grid_offsets() -> tuple[Any, Any]:
    """Per prediction (row-major over the grid): the cell's (row, column) and its centre, normalized."""
    import numpy as np

    rows, cols = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    cells = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float32)
    return cells, (cells + 0.5) / GRID


def build_network(num_classes: int = len(CLASS_NAMES)):
    """Backbone and heads; returns (training model, the tensors the two post-processings take)."""
    import numpy as np
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")

    def conv(x, filters, stride, name):
        x = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    h = conv(inputs, 16, 2, "conv1")  # 64
    h = conv(h, 32, 2, "conv2")  # 32
    h = conv(h, 32, 1, "conv3")
    h = conv(h, 64, 2, "conv4")  # 16
    h = conv(h, 64, 1, "conv5")
    h = conv(h, 64, 1, "conv6")
    n = GRID * GRID

    def head(channels, name):
        out = layers.Conv2D(channels, 1, name=name)(h)
        return layers.Reshape((n, channels), name=f"{name}_flat")(out)

    t_yx, t_hw = head(2, "box_yx"), head(2, "box_hw")
    logits = head(num_classes, "class_logits")
    ssd_codes = head(4, "ssd_codes")

    # YOLOv5-style decoding with operators the IMX500 has: sigmoid, multiply, add.
    cells, _ = _grid_offsets()
    s_yx = layers.Activation("sigmoid", name="box_yx_sigmoid")(t_yx)
    centre = s_yx * np.float32(2 * STRIDE / INPUT_SIZE) + (cells - 0.5) * np.float32(STRIDE / INPUT_SIZE)
    s_hw = layers.Activation("sigmoid", name="box_hw_sigmoid")(t_hw)
    half = layers.Multiply(name="box_hw_square")([s_hw, s_hw]) * np.float32(2 * ANCHOR / INPUT_SIZE)
    corner_min = layers.Subtract(name="box_min")([centre, half])
    corner_max = layers.Add(name="box_max")([centre, half])
    boxes = layers.Concatenate(axis=-1, name="training_boxes")([corner_min, corner_max])
    training = tf.keras.Model(inputs, [boxes, ssd_codes, logits], name="detector_training")
    return training, inputs, (corner_min, corner_max), ssd_codes, logits


def nms_model(inputs, corners, logits, clip_boxes: bool = False):
    """The detector ending in tf.image.combined_non_max_suppression, within imxconv-tf's conditions.

    ``clip_boxes`` bounds both corners to [0, 1] (ReLU with max_value 1) before they are joined:
    MCT then quantizes the boxes unsigned with threshold 1 (a step of 1/256 of the input) instead
    of signed with threshold 2 (1/64), which costs far less mAP@[.5:.95]."""
    import tensorflow as tf

    if clip_boxes:
        names = ("box_min_clip", "box_max_clip")
        corners = [tf.keras.layers.ReLU(max_value=1.0, name=n)(c) for n, c in zip(names, corners, strict=True)]
    boxes = tf.keras.layers.Concatenate(axis=-1, name="boxes")(list(corners))
    scores = tf.keras.layers.Activation("sigmoid", name="scores")(logits)
    nms = tf.image.combined_non_max_suppression(
        tf.expand_dims(boxes, 2),  # [B, N, 1, 4]: one box for all classes (not boxes[:, :, None, :])
        scores,
        max_output_size_per_class=MAX_DETECTIONS,
        max_total_size=MAX_DETECTIONS,
        iou_threshold=IOU_THRESHOLD,
        score_threshold=SCORE_THRESHOLD,
        pad_per_class=False,
        clip_boxes=False,
    )
    outputs = [nms.nmsed_boxes, nms.nmsed_scores, nms.nmsed_classes, nms.valid_detections]
    return tf.keras.Model(inputs, outputs, name="detector_nms")


def ssd_anchors():
    """One square anchor per cell, (y_min, x_min, y_max, x_max) normalized."""
    import numpy as np

    _, centres = _grid_offsets()
    half = SSD_ANCHOR / INPUT_SIZE / 2
    return np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)


def ssd_model(inputs, ssd_codes, logits):
    """The detector ending in edgemdt_cl's SSDPostProcess (Faster R-CNN box decoding, sigmoid, NMS)."""
    import tensorflow as tf
    from edgemdt_cl.keras import ScoreConverter, SSDPostProcess

    post = SSDPostProcess(
        anchors=ssd_anchors(),
        scale_factors=SSD_SCALE_FACTORS,
        clip_size=(1.0, 1.0),
        score_converter=ScoreConverter.SIGMOID,
        score_threshold=SCORE_THRESHOLD,
        iou_threshold=IOU_THRESHOLD,
        max_detections=MAX_DETECTIONS,
        name="ssd_post_process",
    )
    return tf.keras.Model(inputs, list(post([ssd_codes, logits])), name="detector_ssd")


def decode_ssd(codes):
    """SSDPostProcess's box decoding (FasterRCNNBoxDecode before clipping), for the training loss."""
    import tensorflow as tf

    anchors = tf.constant(ssd_anchors())
    a_c = (anchors[:, :2] + anchors[:, 2:]) / 2
    a_s = anchors[:, 2:] - anchors[:, :2]
    scaled = codes / tf.constant(SSD_SCALE_FACTORS)
    centre = scaled[..., :2] * a_s + a_c
    half = tf.exp(scaled[..., 2:]) * a_s / 2
    return tf.concat([centre - half, centre + half], axis=-1)


def targets(all_boxes: list, all_classes: list, num_classes: int = len(CLASS_NAMES)):
    """Training targets per grid cell: class (one-hot), box (normalized y1x1y2x2) and positives.

    Each object is assigned to the cell holding its centre and, as YOLOv5 does, to the nearest
    neighbouring cell in each direction (its decoded centre reaches half a cell beyond its own)."""
    import numpy as np

    batch = len(all_boxes)
    cls = np.zeros((batch, GRID * GRID, num_classes), np.float32)
    box = np.zeros((batch, GRID * GRID, 4), np.float32)
    positive = np.zeros((batch, GRID * GRID), np.float32)
    for b, (boxes, classes) in enumerate(zip(all_boxes, all_classes, strict=True)):
        order = np.argsort([-(y2 - y1) * (x2 - x1) for y1, x1, y2, x2 in boxes])  # small objects win
        for k in order:
            y1, x1, y2, x2 = boxes[k]
            cy, cx = (y1 + y2) / 2 * GRID, (x1 + x2) / 2 * GRID
            row, col = min(int(cy), GRID - 1), min(int(cx), GRID - 1)
            rows = [row, row + (1 if cy - row > 0.5 else -1)]
            cols = [col, col + (1 if cx - col > 0.5 else -1)]
            for r, c in ((rows[0], cols[0]), (rows[1], cols[0]), (rows[0], cols[1])):
                if 0 <= r < GRID and 0 <= c < GRID:
                    i = r * GRID + c
                    cls[b, i] = 0
                    cls[b, i, classes[k]] = 1
                    box[b, i] = boxes[k]
                    positive[b, i] = 1
    return cls, box, positive


def _giou_loss(pred, true):
    import tensorflow as tf

    area_p = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_t = (true[..., 2] - true[..., 0]) * (true[..., 3] - true[..., 1])
    inter_hw = tf.nn.relu(tf.minimum(pred[..., 2:], true[..., 2:]) - tf.maximum(pred[..., :2], true[..., :2]))
    inter = inter_hw[..., 0] * inter_hw[..., 1]
    union = area_p + area_t - inter + 1e-9
    hull_hw = tf.maximum(pred[..., 2:], true[..., 2:]) - tf.minimum(pred[..., :2], true[..., :2])
    hull = hull_hw[..., 0] * hull_hw[..., 1] + 1e-9
    return 1 - (inter / union - (hull - union) / hull)


def make_training_set(maker: SceneMaker, count: int, resize: str):
    """``count`` scenes as the model sees them (JPEG round trip included), with their targets."""
    import io

    import numpy as np
    from PIL import Image

    pixels, boxes, classes = [], [], []
    for _ in range(count):
        scene = maker.scene(dusk=maker.rng.random() < 0.3)
        buffer = io.BytesIO()
        scene.image.save(buffer, format="JPEG", quality=int(maker.rng.integers(75, 96)))
        scene.image = Image.open(buffer).convert("RGB")
        x, b = model_input(scene, resize, maker.rng)
        pixels.append(x)
        boxes.append(b)
        classes.append(scene.classes)
    return np.stack(pixels), boxes, classes


def train(x, boxes, classes, epochs: int, seed: int = 0, log=print):
    """Train with sigmoid focal-free BCE on the class scores (sum over positives) and GIoU on both
    box heads; horizontal flips double the data."""
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    training, *graph = build_network()
    flipped = [b[:, [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 1, 0, 1] for b in boxes]
    x = np.concatenate([x, x[:, :, ::-1]])
    cls_t, box_t, pos_t = targets(boxes + flipped, classes + classes)
    data = tf.data.Dataset.from_tensor_slices((x, cls_t, box_t, pos_t)).shuffle(len(x), seed=seed).batch(32)
    steps = epochs * int(np.ceil(len(x) / 32))
    schedule = tf.keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=4e-3, warmup_steps=steps // 20)
    optimizer = tf.keras.optimizers.Adam(schedule)

    @tf.function
    def step(images, cls_true, box_true, positive):
        with tf.GradientTape() as tape:
            boxes_pred, codes, logits = training(images, training=True)
            n_pos = tf.maximum(tf.reduce_sum(positive), 1.0)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(cls_true, logits)
            cls_loss = tf.reduce_sum(bce) / n_pos
            box_loss = tf.reduce_sum(_giou_loss(boxes_pred, box_true) * positive) / n_pos
            ssd_loss = tf.reduce_sum(_giou_loss(decode_ssd(codes), box_true) * positive) / n_pos
            loss = cls_loss + 5.0 * (box_loss + ssd_loss)
        grads = tape.gradient(loss, training.trainable_variables)
        optimizer.apply_gradients(zip(grads, training.trainable_variables, strict=True))
        return cls_loss, box_loss, ssd_loss

    for epoch in range(epochs):
        started = time.monotonic()
        sums = np.zeros(3)
        for batch in data:
            sums += [float(v) for v in step(*batch)]
        if epoch % 5 == 4 or epoch == epochs - 1:
            cls_l, box_l, ssd_l = sums / len(data)
            log(
                f"epoch {epoch + 1}: class {cls_l:.3f}, box {box_l:.3f}, ssd box {ssd_l:.3f} ({time.monotonic() - started:.1f} s)"
            )
    return graph


# --- The project on disk --------------------------------------------------------------------


def write_project_images(dest: Path, maker: SceneMaker, n_eval: int, n_calibration: int) -> dict:
    """Evaluation and calibration JPEGs; return the COCO instances of the evaluation ones."""
    images, annotations = [], []
    eval_dir = dest / "dataset" / "evaluation"
    for index in range(n_eval):
        dusk = index % 4 == 3
        scene = maker.scene(dusk=dusk)
        relative = f"{'dusk' if dusk else 'day'}/scene_{index:04d}.jpg"
        path = eval_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        scene.image.save(path, quality=90)
        image_id = index + 1
        images.append({"id": image_id, "file_name": relative, "width": scene.image.width, "height": scene.image.height})
        for (x, y, w, h), cls in zip(scene.boxes, scene.classes, strict=True):
            box = [round(float(v), 2) for v in (x, y, w, h)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORY_IDS[CLASS_NAMES[cls]],
                    "bbox": box,
                    "area": round(box[2] * box[3], 2),
                    "iscrowd": 0,
                }
            )
    for index in range(n_calibration):
        scene = maker.scene(dusk=index % 4 == 3)
        path = dest / "dataset" / "calibration" / f"part{index % 2}" / f"calib_{index:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        scene.image.save(path, quality=90)
    categories = [{"id": COCO_CATEGORY_IDS[name], "name": name, "supercategory": "demo"} for name in CLASS_NAMES]
    return {"images": images, "annotations": annotations, "categories": categories}


def configuration(model_path: str, resize: str, batch_size: int = 16, iteration_count: int = 4) -> dict:
    """An AITRIOS-style configuration.json with the detection task's keys, relative paths; by
    default 4 batches of 16 calibration images: each of the 64 written ones once."""
    return {
        "task": "detection",
        "source_keras_model": f"./{model_path}",
        "dataset_image_dir": "./dataset/calibration",
        "batch_size": batch_size,
        "input_tensor_size": INPUT_SIZE,
        "iteration_count": iteration_count,
        "output_dir": "./output",
        "evaluate_image_dir": "./dataset/evaluation",
        "evaluate_image_extension": "jpg",
        "evaluate_label_file": "./dataset/labels.json",
        "evaluate_annotation_file": "./dataset/instances.json",
        "evaluate_result_dir": "./evaluate/results",
        "preprocessing": {"resize": resize},
    }


def build(
    dest: Path,
    resize: str = "letterbox",
    n_train: int = 1200,
    epochs: int = 16,
    n_eval: int = 150,
    n_calibration: int = 64,
    ssd: bool = True,
    clip_boxes: bool = False,
    seed: int = 0,
    log=print,
) -> Path:
    """Create the whole example project under ``dest``; return its configuration.json."""
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    maker = SceneMaker(seed)
    coco = write_project_images(dest, maker, n_eval, n_calibration)
    (dest / "dataset" / "instances.json").write_text(json.dumps(coco) + "\n")
    labels = {name: index for index, name in enumerate(CLASS_NAMES)}
    (dest / "dataset" / "labels.json").write_text(json.dumps(labels) + "\n")
    x, boxes, classes = make_training_set(maker, n_train, resize)
    log(f"{n_eval + n_calibration} project images and {n_train} training scenes in {time.monotonic() - started:.0f} s")
    trained = time.monotonic()
    inputs, corners, codes, logits = train(x, boxes, classes, epochs, seed, log)
    log(f"trained in {time.monotonic() - trained:.0f} s")
    model_dir = dest / "model"
    model_dir.mkdir(exist_ok=True)
    nms_model(inputs, corners, logits, clip_boxes).save(str(model_dir / "model.h5"))
    if ssd:
        ssd_model(inputs, codes, logits).save(str(model_dir / "model_ssd.keras"))
    config = dest / "configuration.json"
    config.write_text(json.dumps(configuration("model/model.h5", resize), indent=2) + "\n")
    log(f"built in {time.monotonic() - started:.0f} s")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=1200)
    parser.add_argument("--no-ssd", action="store_true", help="skip the edgemdt_cl SSDPostProcess variant")
    parser.add_argument(
        "--clip-boxes", action="store_true", help="bound the box corners to [0, 1] before the NMS (finer 8-bit grid)"
    )
    args = parser.parse_args()
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = build(
        args.dest, args.resize, args.train_images, args.epochs, ssd=not args.no_ssd, clip_boxes=args.clip_boxes
    )
    print(f"example project ready: {config}")


if __name__ == "__main__":
    main()
