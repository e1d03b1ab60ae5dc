"""The detection task: evaluation images with boxes (a COCO "instances" JSON file or a folder of
YOLO label files), a model whose outputs are its post-processed detections, and COCO's
figures computed by pycocotools (the reference implementation, so they compare with published
ones).

Ground truth: every image of ``evaluate_image_extension`` under ``evaluate_image_dir`` (any
sub-folders; an image without boxes is valid, it counts for false positives), the boxes of
``evaluate_annotation_file`` in pixels of each image, and ``evaluate_label_file`` naming the
model's class indices. Only image headers are read here (no decoding), so ``validate`` stays
fast.

Model outputs, in this order (as ``tf.image.combined_non_max_suppression`` and ``edgemdt_cl``'s
``SSDPostProcess`` give them): boxes ``(batch, N, 4)`` as normalized ``(y_min, x_min, y_max,
x_max)`` of the model input, scores ``(batch, N)``, classes ``(batch, N)`` (model indices) and
the count of valid detections ``(batch,)``. The tally maps each box back to the pixels of its
original image through the same geometry as the preprocessing (:func:`images.placement`).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import images
from ..config import Config, Preprocessing
from ..config_file import read_text
from ..errors import InputDataError, UnsupportedModelError
from ..problems import Problems, extension_counts, folder_problem, listed, missing
from .classification import label_file

if TYPE_CHECKING:  # numpy is imported where the evaluation needs it: validate stays light
    import numpy as np

KEY = "evaluate_annotation_file"
#: Pixels a box may overhang its image: COCO's own annotations do by fractions of a pixel.
BOX_TOLERANCE = 1.0
#: Detections kept per image and model, best scores first: COCO's figures (AR@100, mAP with
#: maxDets 100) look at no more.
MAX_DETECTIONS = 100
#: Faithfulness: a ``keras_quantized`` detection of at least this score counts, and is reproduced
#: by a ``tflite_quantized`` detection of the same class overlapping it by at least this IoU.
FAITHFUL_SCORE = 0.3
FAITHFUL_IOU = 0.9
FAITHFUL_PAIR = ("keras_quantized", "tflite_quantized")
#: The parameters of tf.image.combined_non_max_suppression the model stage reports.
NMS_PARAMETERS = (
    "max_output_size_per_class",
    "max_total_size",
    "iou_threshold",
    "score_threshold",
    "pad_per_class",
    "clip_boxes",
)
#: The outputs a detector must have, in order: (name, rank, last dimension or None).
OUTPUTS = (("boxes", 3, 4), ("scores", 2, None), ("classes", 2, None), ("count", 1, None))
ACCEPTED_OUTPUTS = (
    "four outputs, in this order: boxes (batch, N, 4) as normalized (y_min, x_min, y_max, x_max), "
    "scores (batch, N), classes (batch, N) and the number of valid detections (batch,), as "
    "tf.image.combined_non_max_suppression and edgemdt_cl's SSDPostProcess give them"
)
COCO_ACCEPTED = (
    'a COCO "instances" JSON object with lists "images" ({"id": integer, "file_name": path relative to '
    'evaluate_image_dir}), "annotations" ({"image_id", "category_id", "bbox": [x, y, width, height] in '
    'pixels}) and "categories" ({"id": integer, "name": a name of the label file})'
)
YOLO_ACCEPTED = (
    "one line per box, 'class x_center y_center width height': class a model index of the label file, "
    "the four others numbers in 0..1 relative to the image's width and height"
)
#: What Sony's IMX500 converter (imxconv-tf 3.19.2) takes of tf.image.combined_non_max_suppression:
#: these fixed arguments, max_output_size_per_class equal to max_total_size, and these bounds.
IMX500_NMS_ARGUMENTS = {"clip_boxes": False, "pad_per_class": False}
IMX500_MAX_DETECTIONS = 500
IMX500_MAX_CLASSES = 1000
YOLO_IGNORED = frozenset({"classes.txt"})  # the class list some labelling tools write beside the labels


@dataclass(frozen=True)
class Box:
    """One ground-truth box in pixels of its image: top-left corner, width, height."""

    label: int  # the model's class index
    x: float
    y: float
    width: float
    height: float
    crowd: bool = False  # COCO's iscrowd: a group of objects, matched but never missed
    area: float | None = None  # COCO's area (of the segmentation) where given; else width x height


@dataclass(frozen=True)
class Annotated:
    """One evaluation image: its size (from its header) and its boxes (none is valid)."""

    path: Path
    size: tuple[int, int] | None  # (width, height); None where the header could not be read
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Annotations:
    """The ground truth: every evaluation image with its boxes, the label file's classes, and
    the geometry of the model input (the tally maps boxes back through it)."""

    labels: dict[str, int]  # class name -> model class index
    samples: tuple[Annotated, ...]
    source: str  # "coco" or "yolo"
    input_size: int
    preprocessing: Preprocessing
    ignored: tuple[tuple[str, str], ...] = ()  # (path, reason): files beside the inputs that are not inputs

    @property
    def images(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self.samples)

    def without(self, unreadable: set[Path]) -> Annotations:
        kept = tuple(s for s in self.samples if s.path not in unreadable)
        return Annotations(self.labels, kept, self.source, self.input_size, self.preprocessing, self.ignored)

    def summary(self) -> dict[str, Any]:
        return {
            "annotations": self.source,
            "classes": len({b.label for s in self.samples for b in s.boxes}),
            "labels": len(self.labels),
            "boxes": sum(len(s.boxes) for s in self.samples),
            "images_without_boxes": sum(1 for s in self.samples if not s.boxes),
        }


class _Found:
    """Problems of several kinds, each gathered so that one message names the first few
    instances and counts the rest, whatever the size of the annotation file."""

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[list[str], str]] = {}

    def add(self, what: str, instance: str, accepted: str) -> None:
        self.kinds.setdefault(what, ([], accepted))[0].append(instance)

    def into(self, problems: Problems, where: str) -> None:
        for what, (instances, accepted) in self.kinds.items():
            problems.data.append(f"{where}: {what} ({len(instances)}): {listed(instances)}; {accepted}")


# -- ground truth -------------------------------------------------------------------------------


def _evaluation_images(config: Config, problems: Problems) -> list[Path]:
    key, root, ext = "evaluate_image_dir", config.evaluate_image_dir, config.evaluate_image_extension
    what = f"a folder of evaluation images (.{ext}, any sub-folders)"
    if problem := folder_problem(key, root, what):
        problems.config.append(problem)
        return []
    found = images.scan(root, [ext])
    if found.links:
        problems.data.append(
            f"key '{key}': symbolic links are not supported, found {listed(found.links)}; "
            f"replace them with the files or folders themselves"
        )
    if not found.files:
        seen = f"; it holds {extension_counts(found.other_extensions)}" if found.others else ""
        problems.data.append(
            f"key 'evaluate_image_extension': no .{ext} images under {root}{seen}; accepted: the extension "
            f"your evaluation images have"
        )
    return found.files


def _sizes(paths: list[Path], problems: Problems) -> dict[Path, tuple[int, int]]:
    """Each image's (width, height) from its header. A file that is not an image at all is left
    to the inputs stage's check of unreadable images (which can skip it); one that looks like an
    image but whose header cannot be read is a problem here."""
    sizes: dict[Path, tuple[int, int]] = {}
    unreadable: list[str] = []
    for path in paths:
        try:
            sizes[path] = images.header_size(path)
        except InputDataError as exc:
            if images.sniff(path) is None:
                unreadable.append(exc.message)
    if unreadable:
        problems.data.append(
            f"{len(unreadable)} evaluation image(s) whose size cannot be read: {listed(unreadable)}; "
            f"the boxes are checked against each image's size"
        )
    return sizes


def _outside(x: float, y: float, w: float, h: float, size: tuple[int, int]) -> bool:
    width, height = size
    t = BOX_TOLERANCE
    return x < -t or y < -t or x + w > width + t or y + h > height + t


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _coco(
    path: Path,
    root: Path,
    found: list[Path],
    sizes: dict[Path, tuple[int, int]],
    labels: dict[str, int] | None,
    label_path: Path,
    problems: Problems,
) -> dict[Path, list[Box]]:
    """The boxes of a COCO "instances" file, by image; every problem into ``problems``."""
    where = f"annotation file {path}"
    try:
        data = json.loads(read_text(path))
    except UnicodeError as exc:
        problems.data.append(f"annotation file {exc}")
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        problems.data.append(f"{where} is not readable JSON ({exc}); expected {COCO_ACCEPTED}")
        return {}
    if not isinstance(data, dict):
        problems.data.append(f"{where} holds a JSON {type(data).__name__}; expected {COCO_ACCEPTED}")
        return {}
    absent = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if absent:
        problems.data.append(
            f"{where}: {listed([repr(k) for k in absent])} missing or not a list; expected {COCO_ACCEPTED}"
        )
        return {}
    bad = _Found()
    categories = _coco_categories(data["categories"], labels, label_path, bad)
    by_id = _coco_images(data["images"], root, found, sizes, bad)
    boxes: dict[Path, list[Box]] = {}
    missing_images: dict[str, None] = {}
    for i, ann in enumerate(data["annotations"]):
        name = f"annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict) or not _integer(ann.get("image_id")) or not _integer(ann.get("category_id")):
            bad.add(
                "malformed annotations",
                f"{name} {_shown(ann)}",
                'expected {"image_id": integer, "category_id": integer, "bbox": [x, y, width, height]}',
            )
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_number, bbox)):
            bad.add("malformed bboxes", f"{name}: {_shown(bbox)}", "expected bbox [x, y, width, height]: four numbers")
            continue
        if ann["image_id"] not in by_id:
            bad.add(
                "annotations of an image id that 'images' does not list",
                f"{name}: image_id {ann['image_id']}",
                "expected the id of an entry of 'images'",
            )
            continue
        file_name, image = by_id[ann["image_id"]]
        if image is None:
            missing_images[file_name] = None
            continue
        if ann["category_id"] not in categories:
            bad.add(
                "annotations of a category id that 'categories' does not list",
                f"{name}: category_id {ann['category_id']}",
                "expected the id of an entry of 'categories'",
            )
            continue
        crowd, area = ann.get("iscrowd", 0), ann.get("area")
        if crowd not in (0, 1) or isinstance(crowd, bool) or (area is not None and not (_number(area) and area >= 0)):
            bad.add(
                "annotations with a malformed iscrowd or area",
                f"{name}: iscrowd {_shown(crowd)}, area {_shown(area)}",
                "expected iscrowd 0 or 1 and area a number >= 0 (or absent)",
            )
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            bad.add(
                "boxes of zero area",
                f"{name} of {file_name!r}: bbox {_shown(bbox)}",
                "expected a width and a height > 0",
            )
            continue
        if image in sizes and _outside(x, y, w, h, sizes[image]):
            width, height = sizes[image]
            bad.add(
                "boxes outside their image",
                f"{name} of {file_name!r} ({width}x{height}): bbox {_shown(bbox)}",
                f"expected 0 <= x, 0 <= y, x + width <= the image's width and y + height <= its height "
                f"(in pixels, {BOX_TOLERANCE:g} px of tolerance)",
            )
            continue
        label = categories[ann["category_id"]]
        if label is not None:
            boxes.setdefault(image, []).append(Box(label, x, y, w, h, bool(crowd), float(area) if area else None))
    for file_name in missing_images:
        bad.add(
            f"annotated images missing under {root}",
            repr(file_name),
            "expected each annotated image's file_name to be the path, relative to evaluate_image_dir, of an image "
            "of evaluate_image_extension there",
        )
    bad.into(problems, where)
    return boxes


def _coco_categories(
    entries: list, labels: dict[str, int] | None, label_path: Path, bad: _Found
) -> dict[int, int | None]:
    """COCO category id -> the model's class index, matched by name (None where it has none)."""
    categories: dict[int, int | None] = {}
    names: dict[int, str] = {}
    for i, cat in enumerate(entries):
        if not isinstance(cat, dict) or not _integer(cat.get("id")) or not isinstance(cat.get("name"), str):
            bad.add(
                "malformed categories", f"categories[{i}] {_shown(cat)}", 'expected {"id": integer, "name": string}'
            )
            continue
        cat_id, name = cat["id"], cat["name"]
        if cat_id in names:
            bad.add(
                "category ids given twice",
                f"id {cat_id} ({names[cat_id]!r} and {name!r})",
                "each category needs its own id",
            )
            continue
        names[cat_id] = name
        categories[cat_id] = labels.get(name) if labels is not None else None
        if labels is not None and name not in labels:
            bad.add(
                f"categories with no entry in label file {label_path}",
                f"{name!r} (id {cat_id})",
                f"expected each category's name in the label file, mapped to the model's index for it; "
                f"known labels: {listed(sorted(labels))}",
            )
    return categories


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _coco_images(
    entries: list, root: Path, found: list[Path], sizes: dict[Path, tuple[int, int]], bad: _Found
) -> dict[int, tuple[str, Path | None]]:
    """COCO image id -> (file_name, the evaluation image it names, or None where it is missing)."""
    on_disk = {_relative(p, root): p for p in found}
    by_id: dict[int, tuple[str, Path | None]] = {}
    by_name: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _integer(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            bad.add(
                "malformed image entries",
                f"images[{i}] {_shown(entry)}",
                'expected {"id": integer, "file_name": path relative to evaluate_image_dir}',
            )
            continue
        image_id, file_name = entry["id"], entry["file_name"]
        if image_id in by_id:
            bad.add(
                "duplicate image ids",
                f"id {image_id} ({by_id[image_id][0]!r} and {file_name!r})",
                "each image needs its own id",
            )
            continue
        normal = posixpath.normpath(file_name.replace("\\", "/"))
        if normal in by_name:
            bad.add(
                "images listed twice",
                f"{file_name!r} (ids {by_name[normal]} and {image_id})",
                "list each image once",
            )
            continue
        by_name[normal] = image_id
        image = on_disk.get(normal)
        by_id[image_id] = (file_name, image)
        stated = (entry.get("width"), entry.get("height"))
        if image in sizes and all(_integer(v) for v in stated) and stated != sizes[image]:
            bad.add(
                "images whose width and height differ from the file's",
                f"{file_name!r}: {stated[0]}x{stated[1]} in the file list, {sizes[image][0]}x{sizes[image][1]} on disk",
                "expected the annotations of these very files (boxes in their pixels)",
            )
    return by_id


def _yolo(
    folder: Path,
    root: Path,
    found: list[Path],
    sizes: dict[Path, tuple[int, int]],
    labels: dict[str, int] | None,
    label_path: Path,
    problems: Problems,
    ignored: list[tuple[str, str]],
) -> dict[Path, list[Box]]:
    """The boxes of a folder of YOLO label files, by image; every problem into ``problems``."""
    where = f"key '{KEY}': YOLO label folder {folder}"
    scanned = images.scan(folder, ["txt"])
    if scanned.links:
        problems.data.append(
            f"{where}: symbolic links are not supported, found {listed(scanned.links)}; "
            f"replace them with the files themselves"
        )
    if scanned.others:
        ignored.append((str(folder), f"{scanned.others} file(s) not ending in .txt in the YOLO label folder"))
    by_label_file = {posixpath.splitext(_relative(p, root))[0] + ".txt": p for p in found}
    indices = set(labels.values()) if labels is not None else None
    bad = _Found()
    boxes: dict[Path, list[Box]] = {}
    missing_images: list[str] = []
    for txt in scanned.files:
        relative = _relative(txt, folder)
        if relative in YOLO_IGNORED:
            ignored.append((str(txt), "a class list, not the boxes of an image"))
            continue
        image = by_label_file.get(relative)
        if image is None:
            missing_images.append(relative)
            continue
        try:
            text = read_text(txt)
        except (OSError, UnicodeError) as exc:
            bad.add("unreadable label files", str(exc), "expected UTF-8 text")
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            box = _yolo_box(line, f"{relative} line {number}", image, sizes.get(image), indices, label_path, bad)
            if box is not None:
                boxes.setdefault(image, []).append(box)
    for relative in missing_images:
        bad.add(
            f"label files without their image under {root}",
            relative,
            "expected <image path relative to evaluate_image_dir, with .txt for its extension> for each "
            "image of evaluate_image_extension there",
        )
    bad.into(problems, where)
    return boxes


def _yolo_box(
    line: str,
    name: str,
    image: Path,
    size: tuple[int, int] | None,
    indices: set[int] | None,
    label_path: Path,
    bad: _Found,
) -> Box | None:
    parts = line.split()
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(parts) != 5 or len(values) != 5 or not all(map(math.isfinite, values)) or not values[0].is_integer():
        bad.add("malformed lines", f"{name}: {line.strip()[:80]!r}", f"expected {YOLO_ACCEPTED}")
        return None
    label, cx, cy, w, h = int(values[0]), *values[1:]
    if indices is not None and label not in indices:
        bad.add(
            f"boxes of a class with no entry in label file {label_path}",
            f"{name}: class {label}",
            f"expected one of the label file's indices: {listed(sorted(indices))}",
        )
        return None
    if w <= 0 or h <= 0:
        bad.add("boxes of zero area", f"{name}: width {w:g}, height {h:g}", "expected a width and a height > 0")
        return None
    if size is None:
        return None
    width, height = size
    x, y, w, h = (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height
    if _outside(x, y, w, h, size):
        bad.add(
            "boxes outside their image",
            f"{name} ({width}x{height}): {line.strip()[:80]!r}",
            f"expected the box within 0..1 of the image's width and height ({BOX_TOLERANCE:g} px of tolerance)",
        )
        return None
    return Box(label, x, y, w, h)


# -- box geometry ---------------------------------------------------------------------------------


def to_image_boxes(boxes: np.ndarray, image_size: tuple[int, int], input_size: int, spec: Preprocessing) -> np.ndarray:
    """A detector's boxes, normalized ``(y_min, x_min, y_max, x_max)`` of its ``input_size``
    square input (N, 4), as ``[x, y, width, height]`` in pixels of the original image of
    ``image_size`` (width, height), clipped to it: the inverse of the preprocessing's resize."""
    import numpy as np

    where = images.placement(image_size, input_size, spec)
    corners = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * input_size
    ys, xs = corners[:, [0, 2]], corners[:, [1, 3]]
    xs, ys = where.to_image(xs, ys, image_size)
    width, height = image_size
    x0, x1 = np.clip(xs.min(axis=1), 0, width), np.clip(xs.max(axis=1), 0, width)
    y0, y1 = np.clip(ys.min(axis=1), 0, height), np.clip(ys.max(axis=1), 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every ``[x, y, w, h]`` box of ``a`` (N, 4) with every one of
    ``b`` (M, 4): an (N, M) matrix."""
    import numpy as np

    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1, bx1, by1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# -- the tally ----------------------------------------------------------------------------------


#: Columns of the rows a tally keeps per detection.
IMAGE, X, Y, W, H, SCORE, LABEL = range(7)


@dataclass
class ModelDetections:
    """One model's detections on the evaluated images: at most :data:`MAX_DETECTIONS` rows per
    image, ``[image index, x, y, width, height, score, class]`` in pixels of the original image."""

    chunks: list[np.ndarray] = field(default_factory=list)

    def rows(self) -> np.ndarray:
        import numpy as np

        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 7))


def detection_arrays(outputs: Sequence[Any], batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A detector's outputs for ``batch`` images as (boxes (B, N, 4), scores (B, N), classes
    (B, N), count (B,)); a ValueError naming what does not fit."""
    import numpy as np

    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(OUTPUTS):
        raise ValueError(f"a detector's outputs are {ACCEPTED_OUTPUTS}; got {type(outputs).__name__}")
    arrays = [np.asarray(o) for o in outputs]
    arrays[3] = arrays[3].reshape(arrays[3].shape[0], -1)[:, 0] if arrays[3].ndim == 2 else arrays[3]
    for (name, rank, last), array in zip(OUTPUTS, arrays, strict=True):
        if array.ndim != rank or array.shape[0] != batch or (last is not None and array.shape[-1] != last):
            raise ValueError(f"output {name} has shape {array.shape} for {batch} images; expected {ACCEPTED_OUTPUTS}")
    if not arrays[0].shape[1] == arrays[1].shape[1] == arrays[2].shape[1]:
        raise ValueError(f"boxes, scores and classes differ in N: {[a.shape for a in arrays[:3]]}")
    return arrays[0], arrays[1], arrays[2], arrays[3]


class Tally:
    """Every model's detections, kept as they come (memory grows with the detections, not the
    images' pixels), scored with pycocotools when asked."""

    def __init__(self, truth: Annotations, models: Sequence[str]):
        self.truth = truth
        self.detections = {name: ModelDetections() for name in models}
        self._evaluated: list[np.ndarray] = []
        self._metrics: dict[str, dict[str, Any]] = {}

    def add(self, model: str, outputs: Sequence[Any], images: np.ndarray) -> None:
        """``outputs`` of ``model`` for the images at indices ``images`` of the ground truth: a
        list or tuple of four arrays, boxes (B, N, 4) as normalized (y_min, x_min, y_max, x_max)
        of the model input, scores (B, N), classes (B, N) as model indices (floats are rounded)
        and the count of valid detections (B,) or (B, 1), B = len(images). Only the first
        ``count`` detections of each image count, the best :data:`MAX_DETECTIONS` of them kept:
        at most 100 rows of 56 bytes per image and model, whatever the images' size."""
        import numpy as np

        boxes, scores, classes, count = detection_arrays(outputs, len(images))
        if model == next(iter(self.detections)):
            self._evaluated.append(np.asarray(images, np.int64))
        rows = []
        for i, index in enumerate(np.asarray(images, np.int64)):
            sample = self.truth.samples[index]
            valid = int(np.clip(count[i], 0, boxes.shape[1]))
            if valid == 0 or sample.size is None:
                continue
            best = np.argsort(-scores[i, :valid], kind="stable")[:MAX_DETECTIONS]
            placed = to_image_boxes(boxes[i, best], sample.size, self.truth.input_size, self.truth.preprocessing)
            found = np.empty((len(best), 7))
            found[:, IMAGE] = index
            found[:, X : H + 1] = placed
            found[:, SCORE] = scores[i, best]
            found[:, LABEL] = np.round(classes[i, best])
            rows.append(found)
        if rows:
            self.detections[model].chunks.append(np.concatenate(rows))
        self._metrics.clear()  # the figures change with every batch

    @property
    def evaluated(self) -> np.ndarray:
        """Indices of the evaluated images (those some batch held), in evaluation order."""
        import numpy as np

        return np.concatenate(self._evaluated) if self._evaluated else np.zeros(0, np.int64)

    @property
    def image_count(self) -> int:
        return int(self.evaluated.size)

    def metrics(self, model: str) -> dict[str, Any]:
        """COCO's figures of ``model`` (pycocotools): mAP@[.5:.95], mAP@.5, mAP@.75, mAP of
        small, medium and large objects, AR@100, and the AP@[.5:.95] of each class; None
        where there is nothing to measure (no box of that class or size)."""
        if model not in self._metrics:
            self._metrics[model] = coco_metrics(self.truth, self.evaluated, self.detections[model].rows())
        return self._metrics[model]

    def faithfulness(self) -> dict[str, Any] | None:
        """How many of ``keras_quantized``'s confident detections ``tflite_quantized``
        reproduces (see :func:`faithfulness`); None unless both were evaluated."""
        reference, candidate = FAITHFUL_PAIR
        if reference not in self.detections or candidate not in self.detections:
            return None
        return faithfulness(self.detections[reference].rows(), self.detections[candidate].rows())

    def summary(self) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        for name in self.detections:
            found = self.metrics(name)
            figures[f"map_50_95_{name}"] = found["map_50_95"]
            figures[f"map_50_{name}"] = found["map_50"]
        return figures


def _rounded(value: float) -> float | None:
    """pycocotools says -1 where nothing could be measured."""
    return None if value < 0 else round(float(value), 4)


def coco_metrics(truth: Annotations, evaluated: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """pycocotools' bounding-box evaluation of ``rows`` (see :class:`ModelDetections`) on the
    images at indices ``evaluated`` of ``truth``."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    classes = sorted(truth.labels.items(), key=lambda kv: kv[1])
    categories = [{"id": index, "name": name} for name, index in classes]
    ids = sorted({int(i) for i in evaluated})
    image_entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in ids:
        sample = truth.samples[index]
        width, height = sample.size or (0, 0)
        image_entries.append({"id": index + 1, "width": width, "height": height})
        for box in sample.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools reads id 0 as "unmatched"
                    "image_id": index + 1,
                    "category_id": box.label,
                    "bbox": [box.x, box.y, box.width, box.height],
                    "area": box.area if box.area is not None else box.width * box.height,
                    "iscrowd": int(box.crowd),
                }
            )
    kept = rows[np.isin(rows[:, IMAGE], ids) & np.isin(rows[:, LABEL], [index for _, index in classes])]
    detections = [
        {
            "id": n + 1,
            "image_id": int(row[IMAGE]) + 1,
            "category_id": int(row[LABEL]),
            "bbox": [float(v) for v in row[X : H + 1]],
            "area": float(row[W] * row[H]),
            "score": float(row[SCORE]),
            "iscrowd": 0,
        }
        for n, row in enumerate(kept)
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": image_entries, "annotations": annotations, "categories": categories}
        dt.dataset = {"images": image_entries, "annotations": detections, "categories": categories}
        gt.createIndex()
        dt.createIndex()
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.params.imgIds = [i + 1 for i in ids]
        evaluation.params.catIds = [index for _, index in classes]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    precision = evaluation.eval["precision"]  # [IoU threshold, recall, class, area range, max detections]
    per_class = {}
    for k, category in enumerate(categories):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[str(category["name"])] = round(float(values.mean()), 4) if values.size else None
    return {
        "map_50_95": _rounded(stats[0]),
        "map_50": _rounded(stats[1]),
        "map_75": _rounded(stats[2]),
        "map_small": _rounded(stats[3]),
        "map_medium": _rounded(stats[4]),
        "map_large": _rounded(stats[5]),
        "ar_100": _rounded(stats[8]),
        "per_class_ap": per_class,
        "detections": len(detections),
    }


def faithfulness(
    reference: np.ndarray, candidate: np.ndarray, score: float = FAITHFUL_SCORE, min_iou: float = FAITHFUL_IOU
) -> dict[str, Any]:
    """The share of ``reference``'s detections of at least ``score`` that ``candidate``
    reproduces: a detection of the same image and class (of any score) overlapping by at least
    ``min_iou``, each candidate detection reproducing at most one (best scores first)."""
    import numpy as np

    confident = reference[reference[:, SCORE] >= score]
    reproduced = 0
    for image in np.unique(confident[:, IMAGE]):
        ours = confident[confident[:, IMAGE] == image]
        ours = ours[np.argsort(-ours[:, SCORE], kind="stable")]
        theirs = candidate[candidate[:, IMAGE] == image]
        taken = np.zeros(len(theirs), bool)
        overlaps = iou(ours[:, X : H + 1], theirs[:, X : H + 1])
        for n, row in enumerate(ours):
            eligible = (theirs[:, LABEL] == row[LABEL]) & ~taken
            if not eligible.any():
                continue
            best = int(np.argmax(np.where(eligible, overlaps[n], -1.0)))
            if overlaps[n, best] >= min_iou:
                taken[best] = True
                reproduced += 1
    return {
        "reference": FAITHFUL_PAIR[0],
        "candidate": FAITHFUL_PAIR[1],
        "score_threshold": score,
        "iou_threshold": min_iou,
        "detections": int(len(confident)),
        "reproduced": reproduced,
        "share": round(reproduced / len(confident), 4) if len(confident) else None,
    }


# -- the model's outputs --------------------------------------------------------------------------


def _post_processing(model: Any) -> dict[str, Any] | None:
    """The detector's post-processing layer and its parameters, where the job recognizes it:
    ``edgemdt_cl``'s SSDPostProcess or ``tf.image.combined_non_max_suppression``."""
    import tensorflow as tf

    for layer in all_layers(model):
        kind = type(layer).__name__
        if kind == "SSDPostProcess":
            cfg = layer.get_config()
            node = layer.inbound_nodes[0] if layer.inbound_nodes else None
            classes = _scores_width(node, 1) if node is not None else None
            if classes is not None and cfg.get("remove_background"):
                classes -= 1
            return {
                "kind": "SSDPostProcess",
                "layer": layer.name,
                "classes": classes,
                "anchors": len(cfg.get("anchors") or []),
                **{
                    k: _plain(cfg.get(k))
                    for k in ("score_threshold", "iou_threshold", "max_detections", "remove_background")
                },
                "score_converter": str(cfg.get("score_converter")),
                "scale_factors": [float(v) for v in cfg.get("scale_factors") or ()],
                "clip_size": [float(v) for v in cfg.get("clip_size") or ()],
            }
        if kind == "TFOpLambda" and layer.get_config().get("function") == "image.combined_non_max_suppression":
            found: dict[str, Any] = {"kind": "combined_non_max_suppression", "layer": layer.name, "classes": None}
            node = layer.inbound_nodes[0]
            try:  # the call's arguments as Keras kept them (positional, or keywords once reloaded)
                bound = inspect.signature(tf.image.combined_non_max_suppression).bind(
                    *node.call_args, **node.call_kwargs
                )
            except TypeError:
                return found
            bound.apply_defaults()
            args = bound.arguments
            width = getattr(args["scores"], "shape", None)
            found["classes"] = int(width[-1]) if width is not None and width[-1] is not None else None
            return found | {key: _plain(args[key]) for key in NMS_PARAMETERS}
    return None


def _plain(value: Any) -> Any:
    """A parameter as JSON can hold it (a tensor or numpy number given to the layer as a number)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(number) if number.is_integer() and "int" in str(getattr(value, "dtype", "")) else number


def _scores_width(node: Any, position: int) -> int | None:
    import tensorflow as tf

    inputs = tf.nest.flatten(node.call_args[0] if node.call_args else node.call_kwargs.get("inputs"))
    shape = getattr(inputs[position], "shape", None) if len(inputs) > position else None
    return int(shape[-1]) if shape is not None and shape[-1] is not None else None


def all_layers(model: Any) -> list[Any]:
    """Every layer, nested models' included."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found += all_layers(layer)
    return found


def _check_imx500_nms(post: dict[str, Any]) -> None:
    """The converter's conditions on a combined NMS, checked before any work where the IMX500
    package is asked for (SSDPostProcess meets them by construction)."""
    if post["kind"] != "combined_non_max_suppression" or "max_total_size" not in post:
        return
    broken = [f"{key}={post[key]}" for key, wanted in IMX500_NMS_ARGUMENTS.items() if post[key] != wanted]
    if post["max_output_size_per_class"] != post["max_total_size"]:
        broken.append(
            f"max_output_size_per_class={post['max_output_size_per_class']} with max_total_size={post['max_total_size']}"
        )
    if isinstance(post["max_total_size"], int) and post["max_total_size"] > IMX500_MAX_DETECTIONS:
        broken.append(f"max_total_size={post['max_total_size']}")
    if post["classes"] is not None and post["classes"] > IMX500_MAX_CLASSES:
        broken.append(f"{post['classes']} classes")
    if broken:
        fixed = ", ".join(f"{key}={value}" for key, value in IMX500_NMS_ARGUMENTS.items())
        raise UnsupportedModelError(
            f"key 'imx500': the model's tf.image.combined_non_max_suppression (layer {post['layer']!r}) has "
            f"{', '.join(broken)}, which Sony's IMX500 converter refuses; accepted: {fixed}, "
            f"max_output_size_per_class equal to max_total_size, at most {IMX500_MAX_DETECTIONS} detections and "
            f"{IMX500_MAX_CLASSES} classes (or imx500.package off)",
            layer=post["layer"],
        )


class Detection:
    name = "detection"

    def ground_truth(self, config: Config, problems: Problems) -> Annotations:
        labels = label_file(config.evaluate_label_file, problems, "class names (COCO category names)")
        found = _evaluation_images(config, problems)
        annotation = config.evaluate_annotation_file
        boxes: dict[Path, list[Box]] = {}
        ignored: list[tuple[str, str]] = []
        sizes: dict[Path, tuple[int, int]] = {}
        accepted = "a COCO instances JSON file, or a folder of YOLO label files"
        if annotation is None:  # the schema requires it for detection; checked again for the library's callers
            problems.config.append(f"key '{KEY}' is required for task 'detection': {accepted}")
        elif not annotation.exists():
            problems.config.append(missing(KEY, annotation, accepted))
        elif found:
            sizes = _sizes(found, problems)
            root, label_path = config.evaluate_image_dir, config.evaluate_label_file
            if annotation.is_dir():
                boxes = _yolo(annotation, root, found, sizes, labels, label_path, problems, ignored)
            else:
                boxes = _coco(annotation, root, found, sizes, labels, label_path, problems)
        samples = tuple(Annotated(p, sizes.get(p), tuple(boxes.get(p, ()))) for p in found)
        source = "yolo" if annotation is not None and annotation.is_dir() else "coco"
        return Annotations(
            labels or {}, samples, source, config.input_tensor_size, config.preprocessing, tuple(ignored)
        )

    def check_outputs(self, model: Any, config: Config, truth: Annotations) -> dict[str, Any]:
        """Four outputs: boxes, scores, classes and count, as post-processing gives them."""
        shapes = [tuple(o.shape) for o in model.outputs]
        names = list(model.output_names)
        given = ", ".join(f"{n!r} {s}" for n, s in zip(names, shapes, strict=True))
        if len(shapes) != len(OUTPUTS):
            raise UnsupportedModelError(
                f"key 'source_keras_model': the model has {len(shapes)} output(s) ({given}); the detection task "
                f"reads {ACCEPTED_OUTPUTS}",
                outputs=names,
            )
        for (role, rank, last), name, shape in zip(OUTPUTS, names, shapes, strict=True):
            if len(shape) != rank or (last is not None and shape[-1] != last):
                raise UnsupportedModelError(
                    f"key 'source_keras_model': the model's output {name!r} has shape {shape}, which cannot be "
                    f"the {role} (the outputs: {given}); the detection task reads {ACCEPTED_OUTPUTS}",
                    outputs=names,
                )
        widths = {shape[1] for shape in shapes[:3]}
        if len(widths) != 1:
            raise UnsupportedModelError(
                f"key 'source_keras_model': the model's boxes, scores and classes differ in their number of "
                f"detections ({given}); the detection task reads {ACCEPTED_OUTPUTS}",
                outputs=names,
            )
        post = _post_processing(model)
        classes = post.get("classes") if post else None
        if classes is not None:
            too_big = sorted((label, name) for name, label in truth.labels.items() if label >= classes)
            if too_big:
                label, name = too_big[0]
                raise InputDataError(
                    f"label file {config.evaluate_label_file}: id {label} of {name!r} is beyond the "
                    f"{classes} classes of the model's {post['kind'] if post else ''}; accepted ids: 0 to {classes - 1}",
                    file=str(config.evaluate_label_file),
                )
        if post is not None and config.imx500 is not None and config.imx500.package:
            _check_imx500_nms(post)
        return {
            "detection_outputs": dict(zip([role for role, _, _ in OUTPUTS], names, strict=True)),
            "max_detections": widths.pop(),
            "post_processing": post,
        }

    def tally(self, truth: Annotations, models: Sequence[str]) -> Tally:
        return Tally(truth, models)


DETECTION = Detection()
