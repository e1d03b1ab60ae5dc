"""The detection task without TensorFlow: its configuration, its ground truth (COCO and YOLO
annotations, every bad input reported together), the mapping of a detector's boxes back to the
original image, and the tally's pycocotools figures and faithfulness on detections whose
answer is known."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, save_image, write_config

from mctq_job import config as config_mod
from mctq_job import images, inputs
from mctq_job.config import Preprocessing
from mctq_job.errors import ConfigError, InputDataError
from mctq_job.tasks import detection, task_for
from mctq_job.tasks.detection import Annotated, Annotations, Box, Tally, faithfulness, to_image_boxes

LABELS = {"cat": 0, "dog": 1}
SIZES = {"a.jpg": (64, 48), "sub/b.jpg": (40, 80), "sub/deeper/c.jpg": (50, 50)}


def check(project: Path) -> inputs.Inputs:
    path = project / "configuration.json"
    return inputs.check(config_mod.load(path), path)


def coco_document() -> dict:
    """Category ids 7 and 3 on purpose: matched to the label file by name, not by id."""
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "sub/b.jpg", "width": 40, "height": 80},
            {"id": 5, "file_name": "sub/deeper/c.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 6, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 0, 34, 48], "iscrowd": 0, "area": 900},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0.5, 2, 39, 70]},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


def detection_project(root: Path, annotation: str = "annotations.json", **config) -> Path:
    """A detection project whose images and annotations are real and whose model is a placeholder."""
    (root / "model" / "saved_model").mkdir(parents=True)
    (root / "model" / "saved_model" / "saved_model.pb").write_bytes(b"placeholder")
    for i in range(2):
        save_image(root / "calibration" / f"c{i}.jpg", size=(30, 20))
    for name, size in SIZES.items():
        save_image(root / "val" / name, size=size)
    (root / "labels.json").write_text(json.dumps(LABELS))
    (root / "annotations.json").write_text(json.dumps(coco_document()))
    write_config(
        root,
        {
            "source_keras_model": "model/saved_model",
            "dataset_image_dir": "calibration",
            "batch_size": 2,
            "input_tensor_size": 32,
            "iteration_count": 1,
            "output_dir": "out",
            "evaluate_image_dir": "val",
            "evaluate_image_extension": "jpg",
            "evaluate_label_file": "labels.json",
            "evaluate_result_dir": "results",
            "task": "detection",
            "evaluate_annotation_file": annotation,
            "preprocessing": {"resize": "letterbox"},
            **config,
        },
    )
    return root


def edit_coco(project: Path, change) -> None:
    document = json.loads((project / "annotations.json").read_text())
    change(document)
    (project / "annotations.json").write_text(json.dumps(document))


def problems_of(project: Path) -> list[str]:
    with pytest.raises(InputDataError) as failed:
        check(project)
    return failed.value.problems


# -- configuration ------------------------------------------------------------------------------


def test_the_task_is_chosen_by_the_configuration(tmp_path):
    project = detection_project(tmp_path / "p")
    config = config_mod.load(project / "configuration.json")
    assert config.task == "detection" and task_for(config).name == "detection"
    assert config.evaluate_annotation_file == project / "annotations.json"  # resolved against the file's folder


# -- ground truth: COCO --------------------------------------------------------------------------


def test_coco_boxes_are_read_in_pixels_with_categories_matched_by_name(tmp_path):
    checked = check(detection_project(tmp_path / "p"))
    truth = checked.truth
    assert isinstance(truth, Annotations) and truth.source == "coco"
    by_name = {s.path.relative_to(tmp_path / "p" / "val").as_posix(): s for s in truth.samples}
    assert set(by_name) == set(SIZES)  # every image under the folder, any depth
    assert {name: s.size for name, s in by_name.items()} == SIZES  # from each file's header
    a = by_name["a.jpg"].boxes
    assert a == (Box(1, 4, 6, 20, 10), Box(0, 30, 0, 34, 48, False, 900.0))  # dog (id 7) -> 1, cat (id 3) -> 0
    assert by_name["sub/b.jpg"].boxes == (Box(0, 0.5, 2, 39, 70),)
    assert by_name["sub/deeper/c.jpg"].boxes == ()  # listed without boxes: valid
    assert truth.summary() == {
        "annotations": "coco",
        "classes": 2,
        "labels": 2,
        "boxes": 3,
        "images_without_boxes": 1,
    }


def test_an_image_the_annotation_file_does_not_list_is_evaluated_without_boxes(tmp_path):
    project = detection_project(tmp_path / "p")
    save_image(project / "val" / "extra" / "empty.jpg", size=(20, 20))
    truth = check(project).truth
    assert [s.boxes for s in truth.samples if s.path.name == "empty.jpg"] == [()]
    assert len(truth.images) == 4


def test_every_coco_problem_is_named_together(tmp_path):
    """A category with no label, a box outside its image, one of zero area, an annotated image
    that is missing, a duplicate image id and a malformed annotation: one error naming each,
    with the file, the entry and what is accepted."""
    project = detection_project(tmp_path / "p")

    def break_it(document):
        document["categories"].append({"id": 9, "name": "zebra"})
        document["images"].append({"id": 2, "file_name": "again.jpg"})
        document["images"].append({"id": 8, "file_name": "gone.jpg"})
        document["annotations"] += [
            {"id": 10, "image_id": 8, "category_id": 7, "bbox": [0, 0, 5, 5]},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [50, 40, 20, 10]},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10]},
            {"id": 13, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10]},
        ]

    edit_coco(project, break_it)
    problems = problems_of(project)
    where = f"annotation file {project / 'annotations.json'}"
    assert all(p.startswith(where) for p in problems), problems
    text = "\n".join(problems)
    assert f"categories with no entry in label file {project / 'labels.json'} (1): 'zebra' (id 9)" in text
    assert "known labels: cat, dog" in text
    assert "duplicate image ids (1): id 2 ('sub/b.jpg' and 'again.jpg'); each image needs its own id" in text
    assert "annotated images missing under" in text and "'gone.jpg'" in text
    assert "boxes outside their image (1): annotations[4] (id 11) of 'a.jpg' (64x48): bbox [50, 40, 20, 10]" in text
    assert "boxes of zero area (1): annotations[5] (id 12) of 'a.jpg': bbox [5, 5, 0, 10]" in text
    assert "malformed bboxes (1): annotations[6] (id 13): [5, 5, 10]; expected bbox [x, y, width, height]" in text
    assert len(problems) == 6


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("{not json", "is not readable JSON"),
        ("[]", "holds a JSON list"),
        ('{"images": [], "annotations": []}', "'categories' missing or not a list"),
    ],
)
def test_an_annotation_file_that_is_not_coco_says_what_is_expected(tmp_path, content, expect):
    project = detection_project(tmp_path / "p")
    (project / "annotations.json").write_text(content)
    (problem,) = problems_of(project)
    assert expect in problem and 'a COCO "instances" JSON object' in problem


def test_a_stated_image_size_that_differs_from_the_file_is_named(tmp_path):
    project = detection_project(tmp_path / "p")
    edit_coco(project, lambda d: d["images"][0].update(width=640, height=480))
    (problem,) = problems_of(project)
    assert "'a.jpg': 640x480 in the file list, 64x48 on disk" in problem


def test_many_bad_boxes_make_one_bounded_message(tmp_path):
    project = detection_project(tmp_path / "p")
    bad = [{"id": 100 + i, "image_id": 1, "category_id": 7, "bbox": [0, 0, 0, 1]} for i in range(500)]
    edit_coco(project, lambda d: d["annotations"].extend(bad))
    (problem,) = problems_of(project)
    assert "boxes of zero area (500)" in problem and "and 495 more" in problem and len(problem) < 1000


def test_the_annotation_file_must_exist(tmp_path):
    project = detection_project(tmp_path / "p", annotation="nowhere.json")
    with pytest.raises(ConfigError, match="key 'evaluate_annotation_file': .*nowhere.json does not exist"):
        check(project)


def test_headers_only_are_read_so_a_truncated_image_still_validates(tmp_path):
    """The sizes come from the headers (no decoding): a JPEG cut after its header validates, as
    for classification; its decoding fails later, naming it."""
    project = detection_project(tmp_path / "p")
    image = project / "val" / "a.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: data.index(b"\xff\xda") + 20])  # the header and the start of the scan only
    truth = check(project).truth
    assert [s.size for s in truth.samples if s.path == image] == [(64, 48)]


def test_validate_reads_a_thousand_images_quickly(tmp_path):
    """The inputs check of 1000 annotated camera-sized (1280x720) JPEGs reads headers only:
    well under a second here (measured: about 0.1 s), bounded at 3 s for a loaded machine."""
    project = detection_project(tmp_path / "p")
    document = coco_document()
    picture = project / "val" / "many" / "0.jpg"
    save_image(picture, size=(1280, 720))
    for i in range(1000):
        (project / "val" / "many" / f"{i}.jpg").write_bytes(picture.read_bytes())
        document["images"].append({"id": 100 + i, "file_name": f"many/{i}.jpg", "width": 1280, "height": 720})
        document["annotations"].append({"id": 100 + i, "image_id": 100 + i, "category_id": 3, "bbox": [1, 2, 300, 400]})
    (project / "annotations.json").write_text(json.dumps(document))
    began = time.perf_counter()
    truth = check(project).truth
    seconds = time.perf_counter() - began
    assert len(truth.images) == 1003 and sum(len(s.boxes) for s in truth.samples) == 1003
    assert seconds < 3, seconds


def test_an_unreadable_image_is_named_or_skipped_as_on_corrupt_image_says(tmp_path):
    """A file that is no image at all: named with the other problems ('fail'), or left out
    with its boxes ('skip'), as for classification."""
    project = detection_project(tmp_path / "p")
    (project / "val" / "a.jpg").write_bytes(b"not an image")
    edit_coco(project, lambda d: d["categories"].append({"id": 9, "name": "zebra"}))
    problems = problems_of(project)
    assert len(problems) == 2 and any("a.jpg is not a JPEG, PNG or BMP file" in p for p in problems)
    project = detection_project(tmp_path / "q", on_corrupt_image="skip")
    (project / "val" / "a.jpg").write_bytes(b"not an image")
    checked = check(project)
    assert [p.name for p in checked.truth.images] == ["b.jpg", "c.jpg"] and checked.skipped[0][0].name == "a.jpg"
    assert checked.truth.summary()["boxes"] == 1


# -- ground truth: YOLO --------------------------------------------------------------------------


def write_yolo(project: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (project / "labels" / name).parent.mkdir(parents=True, exist_ok=True)
        (project / "labels" / name).write_text(text)


def test_yolo_labels_mirror_the_image_paths_and_are_normalized(tmp_path):
    project = detection_project(tmp_path / "p", annotation="labels")
    write_yolo(
        project,
        {
            "a.txt": "1 0.25 0.5 0.5 0.25\n\n0 0.5 0.5 1 1\n",
            "sub/b.txt": "0 0.5 0.5 0.5 0.5",
            "classes.txt": "cat\ndog\n",  # a labelling tool's class list: not an image's boxes
        },
    )
    checked = check(project)
    truth = checked.truth
    assert truth.source == "yolo"
    boxes = {s.path.name: s.boxes for s in truth.samples}
    assert boxes["a.jpg"] == (Box(1, 0.0, 18.0, 32.0, 12.0), Box(0, 0.0, 0.0, 64.0, 48.0))  # 64x48
    assert boxes["b.jpg"] == (Box(0, 10.0, 20.0, 20.0, 40.0),)  # 40x80
    assert boxes["c.jpg"] == ()  # no label file: no boxes
    assert any(path.endswith("classes.txt") for path, _ in checked.ignored)


def test_every_yolo_problem_is_named_together(tmp_path):
    project = detection_project(tmp_path / "p", annotation="labels")
    write_yolo(
        project,
        {
            "a.txt": "0 0.5 0.5 0.2\n7 0.5 0.5 0.1 0.1\n0 0.9 0.5 0.5 0.5\n1 0.5 0.5 0 0.3\ncat 0.5 0.5 0.1 0.1\n",
            "gone.txt": "0 0.5 0.5 0.1 0.1\n",
        },
    )
    problems = problems_of(project)
    text = "\n".join(problems)
    assert f"key 'evaluate_annotation_file': YOLO label folder {project / 'labels'}" in problems[0]
    assert "malformed lines (2): a.txt line 1: '0 0.5 0.5 0.2', a.txt line 5: 'cat 0.5 0.5 0.1 0.1'" in text
    assert "'class x_center y_center width height'" in text
    assert f"boxes of a class with no entry in label file {project / 'labels.json'} (1): a.txt line 2: class 7" in text
    assert "boxes outside their image (1): a.txt line 3 (64x48)" in text
    assert "boxes of zero area (1): a.txt line 4: width 0, height 0.3" in text
    assert "label files without their image under" in text and "gone.txt" in text
    assert len(problems) == 5


def test_validate_on_the_command_line_reports_the_problems_together_with_exit_4(tmp_path):
    project = detection_project(tmp_path / "p")
    edit_coco(project, lambda d: d["categories"].append({"id": 9, "name": "zebra"}))
    (project / "calibration" / "c0.jpg").write_bytes(b"")  # and a problem of another stage's kind
    result = run_cli("validate", cwd=project)
    last = result.events[-1]
    assert result.returncode == InputDataError.exit_code, result.stdout[-2000:]
    assert len(last["problems"]) == 2
    assert any("'zebra' (id 9)" in p for p in last["problems"])
    assert any("c0.jpg is empty" in p for p in last["problems"])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"recover": {"max_attempts": 2}}, "key 'recover' needs the accuracy gate it recovers; for task 'detection'"),
        ({"extra_exports": ["float16"]}, "key 'extra_exports'"),
        ({"export_format": "mct_int8"}, "key 'export_format'"),
        ({"max_top1_drop": 0.1}, "accepted: max_map_drop"),
        ({"target_platform": "tflite", "target_platform_version": "1.0"}, "key 'target_platform': 'tflite'"),
        ({"target_platform": "qnnpack", "target_platform_version": "1.0"}, "key 'target_platform': 'qnnpack'"),
    ],
)
def test_what_a_detection_run_cannot_do_is_refused_before_any_work(tmp_path, change, named):
    """Recovery without the mAP gate it recovers, the extra exports and MCT's own exporters know no cut detector:
    one configuration error naming the key, before TensorFlow is imported, nothing written."""
    project = detection_project(tmp_path / "p", **change)
    result = run_cli("run", cwd=project)
    last = result.events[-1]
    assert result.returncode == ConfigError.exit_code == last["exit_code"], result.stdout[-2000:]
    assert last["event"] == "run.failed" and named in last["message"]
    assert not {e.get("stage") for e in result.named("stage.start")} - {"config"}
    assert not (project / "out").exists() and not (project / "results").exists()


def test_the_map_gate_is_for_detection_only(tmp_path):
    with pytest.raises(ValueError, match="key 'max_map_drop' is the mAP gate of task 'detection'"):
        config_mod.Config.model_validate(
            {
                **json.loads((detection_project(tmp_path / "p") / "configuration.json").read_text()),
                "task": "classification",
                "evaluate_annotation_file": None,
                "preprocessing": {"resize": "stretch"},
                "max_map_drop": 0.1,
            }
        )


# -- box geometry --------------------------------------------------------------------------------


def test_stretch_maps_each_axis_by_its_own_scale():
    # 200x100 image stretched to 100x100: x halves, y stays. Normalized (y0, x0, y1, x1).
    boxes = to_image_boxes(np.array([[0.1, 0.2, 0.5, 0.6]]), (200, 100), 100, Preprocessing(resize="stretch"))
    np.testing.assert_allclose(boxes, [[40, 10, 80, 40]])


def test_letterbox_removes_the_padding_and_undoes_the_scale():
    # 200x100 image letterboxed into 100x100: scale 0.5, 100x50 placed at top 25.
    spec = Preprocessing(resize="letterbox")
    boxes = to_image_boxes(np.array([[0.25, 0.1, 0.75, 0.5], [0.0, 0.5, 0.5, 1.0]]), (200, 100), 100, spec)
    # input y 25..75 -> 0..100, x 10..50 -> 20..100; the second starts in the padding (y 0 -> -50): clipped
    np.testing.assert_allclose(boxes, [[20, 0, 80, 100], [100, 0, 100, 50]])


def test_letterbox_of_an_odd_size_maps_the_image_region_to_the_whole_image():
    # 333x100 into 96: scale 96/333, 96x29 (28.83 rounded) placed at top (96-29)//2 = 33
    spec = Preprocessing(resize="letterbox")
    assert images.placement((333, 100), 96, spec) == images.Placement(0, 33, 96, 29)
    boxes = to_image_boxes(np.array([[33 / 96, 0, 62 / 96, 1]]), (333, 100), 96, spec)
    np.testing.assert_allclose(boxes, [[0, 0, 333, 100]], atol=1e-9)


def test_swapped_corners_still_make_a_box():
    boxes = to_image_boxes(np.array([[0.5, 0.6, 0.1, 0.2]]), (200, 100), 100, Preprocessing(resize="stretch"))
    np.testing.assert_allclose(boxes, [[40, 10, 80, 40]])


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_the_mapping_inverts_the_preprocessing_itself(resize):
    """A white rectangle drawn on a photo-sized image, resized as the models see it: its extent
    in the model input, mapped back, is the rectangle drawn (within one input pixel's size)."""
    from PIL import Image

    spec = Preprocessing(resize=resize, interpolation="nearest")
    img = Image.new("RGB", (640, 360), (0, 0, 0))
    img.paste((255, 255, 255), (100, 40, 420, 300))
    pixels = np.asarray(images.resize(img, 64, spec))[..., 0]
    rows, cols = np.nonzero(pixels == 255)
    found = np.array([[rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]]) / 64
    mapped = to_image_boxes(found, img.size, 64, spec)[0]
    step = 640 / 64  # one input pixel in image pixels
    np.testing.assert_allclose(mapped, [100, 40, 320, 260], atol=step)


# -- the tally -----------------------------------------------------------------------------------


def truth_of(boxes: dict[int, list[Box]], size=(100, 100), count=3, resize="stretch") -> Annotations:
    samples = tuple(Annotated(Path(f"{i}.jpg"), size, tuple(boxes.get(i, ()))) for i in range(count))
    return Annotations(dict(LABELS), samples, "coco", 100, Preprocessing(resize=resize))


def outputs_for(found: list[list[tuple[list[float], float, int]]], width: int = 5):
    """The four arrays of a detector for len(found) images: each ([x, y, w, h] in pixels of a
    100x100 image, score, class), padded to ``width`` as NMS pads."""
    batch = len(found)
    boxes, scores = np.zeros((batch, width, 4), np.float32), np.zeros((batch, width), np.float32)
    classes, count = np.zeros((batch, width), np.float32), np.zeros(batch, np.int32)
    for i, detections in enumerate(found):
        for n, ((x, y, w, h), score, label) in enumerate(detections):
            boxes[i, n] = [y / 100, x / 100, (y + h) / 100, (x + w) / 100]
            scores[i, n], classes[i, n] = score, label
        count[i] = len(detections)
    boxes[:, :, :] += np.where(np.arange(width)[None, :, None] >= count[:, None, None], 0.3, 0)  # padding: junk
    return boxes, scores, classes, count


def test_perfect_detections_score_one_everywhere():
    truth = truth_of({0: [Box(0, 10, 10, 30, 40)], 1: [Box(1, 50, 50, 20, 20), Box(0, 0, 0, 90, 90)]})
    tally = Tally(truth, ["keras"])
    tally.add("keras", outputs_for([[([10, 10, 30, 40], 0.9, 0)]]), np.array([0]))
    tally.add("keras", outputs_for([[([50, 50, 20, 20], 0.8, 1), ([0, 0, 90, 90], 0.7, 0)], []]), np.array([1, 2]))
    found = tally.metrics("keras")
    assert found["map_50_95"] == found["map_50"] == found["map_75"] == found["ar_100"] == 1.0
    assert found["per_class_ap"] == {"cat": 1.0, "dog": 1.0}
    assert found["detections"] == 3 and tally.image_count == 3
    assert tally.summary() == {"map_50_95_keras": 1.0, "map_50_keras": 1.0}


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        (0, 1.0),
        (5, 0.7),  # IoU 45/55 = 0.818: a hit at the thresholds 0.50 .. 0.80, 7 of 10
        (10, 0.4),  # IoU 40/60 = 0.667: 0.50, 0.55, 0.60, 0.65, 4 of 10
        (25, 0.0),  # IoU 25/75 = 0.333: none
    ],
)
def test_a_shifted_box_scores_the_thresholds_its_iou_passes(shift, expected):
    truth = truth_of({0: [Box(0, 0, 0, 50, 50)]}, count=1)
    tally = Tally(truth, ["keras"])
    tally.add("keras", outputs_for([[([shift, 0, 50, 50], 0.9, 0)]]), np.array([0]))
    found = tally.metrics("keras")
    assert found["map_50_95"] == expected
    assert found["map_50"] == (0.0 if shift == 25 else 1.0)


def test_a_wrong_class_a_missed_box_and_a_false_alarm_are_counted():
    truth = truth_of({0: [Box(0, 0, 0, 50, 50)], 1: [Box(1, 0, 0, 50, 50)]}, count=2)
    tally = Tally(truth, ["keras", "wrong"])
    tally.add("keras", outputs_for([[([0, 0, 50, 50], 0.9, 0)], []]), np.array([0, 1]))  # misses image 1's dog
    tally.add("wrong", outputs_for([[([0, 0, 50, 50], 0.9, 1)], [([0, 0, 50, 50], 0.8, 1)]]), np.array([0, 1]))
    assert tally.metrics("keras")["per_class_ap"] == {"cat": 1.0, "dog": 0.0}
    # 'wrong': image 0's cat called a dog (missed cat: AP 0); the dog is found, but below a false dog: precision
    # 0 then 1/2, whose envelope is 1/2 at every recall: AP 0.5
    assert tally.metrics("wrong")["per_class_ap"] == {"cat": 0.0, "dog": 0.5}
    assert tally.metrics("wrong")["map_50_95"] == 0.25


def test_only_the_valid_detections_count_and_at_most_a_hundred_per_image():
    truth = truth_of({0: [Box(0, 0, 0, 10, 10)]}, count=1)
    tally = Tally(truth, ["keras"])
    boxes, scores, classes, count = outputs_for([[([0, 0, 10, 10], 0.9, 0)]], width=300)
    scores[0, 1:] = 0.99  # padding rows beyond the count, with high scores: ignored
    tally.add("keras", (boxes, scores, classes, count), np.array([0]))
    assert len(tally.detections["keras"].rows()) == 1 and tally.metrics("keras")["map_50_95"] == 1.0
    many = [([i % 90, 0, 10, 10], 0.5 + i / 1000, 0) for i in range(250)]
    tally.add("keras", outputs_for([many], width=300), np.array([0]))
    rows = tally.detections["keras"].rows()
    assert len(rows) == 1 + detection.MAX_DETECTIONS
    assert rows[1:, detection.SCORE].min() == pytest.approx(0.5 + 150 / 1000)  # the best hundred kept


def test_letterboxed_detections_are_scored_in_the_original_pixels():
    """Boxes given relative to a letterboxed 100x100 input of a 200x100 image score 1 against
    the ground truth in the image's pixels."""
    truth = truth_of({0: [Box(0, 20, 0, 80, 100)]}, size=(200, 100), count=1, resize="letterbox")
    tally = Tally(truth, ["keras"])
    boxes = np.array([[[0.25, 0.1, 0.75, 0.5]]], np.float32)
    tally.add("keras", (boxes, np.array([[0.9]]), np.array([[0.0]]), np.array([1])), np.array([0]))
    assert tally.metrics("keras")["map_50_95"] == 1.0


def test_no_detection_at_all_scores_zero_and_no_box_at_all_scores_nothing():
    tally = Tally(truth_of({0: [Box(0, 0, 0, 10, 10)]}, count=1), ["keras"])
    tally.add("keras", outputs_for([[]]), np.array([0]))
    assert tally.metrics("keras")["map_50_95"] == 0.0
    empty = Tally(truth_of({}, count=1), ["keras"])
    empty.add("keras", outputs_for([[([0, 0, 10, 10], 0.9, 0)]]), np.array([0]))
    assert empty.metrics("keras")["map_50_95"] is None and empty.metrics("keras")["per_class_ap"]["cat"] is None


def test_outputs_of_another_shape_are_refused_naming_what_is_accepted():
    tally = Tally(truth_of({}, count=1), ["keras"])
    with pytest.raises(ValueError, match=r"boxes \(batch, N, 4\)"):
        tally.add("keras", np.zeros((1, 10)), np.array([0]))
    boxes, scores, classes, count = outputs_for([[]])
    with pytest.raises(ValueError, match="output scores has shape"):
        tally.add("keras", (boxes, scores[:, :, None], classes, count), np.array([0]))


def rows(*detections: tuple[int, list[float], float, int]) -> np.ndarray:
    """Rows of ModelDetections: (image, [x, y, w, h], score, class)."""
    return np.array([[image, *box, score, label] for image, box, score, label in detections], float).reshape(-1, 7)


def test_faithfulness_counts_confident_detections_reproduced_at_iou_0_9_with_the_same_class():
    reference = rows(
        (0, [0, 0, 100, 100], 0.9, 0),  # reproduced exactly
        (0, [200, 0, 100, 100], 0.8, 1),  # reproduced shifted by 5: IoU 95/105 = 0.905
        (1, [0, 0, 100, 100], 0.7, 0),  # shifted by 10: IoU 90/110 = 0.818, not reproduced
        (1, [200, 0, 100, 100], 0.6, 0),  # same place, other class: not reproduced
        (2, [0, 0, 10, 10], 0.29, 0),  # below 0.3: not counted
    )
    candidate = rows(
        (0, [0, 0, 100, 100], 0.1, 0),  # any score of the candidate counts
        (0, [205, 0, 100, 100], 0.8, 1),
        (1, [10, 0, 100, 100], 0.7, 0),
        (1, [200, 0, 100, 100], 0.6, 1),
    )
    found = faithfulness(reference, candidate)
    assert (found["detections"], found["reproduced"], found["share"]) == (4, 2, 0.5)
    assert faithfulness(reference, reference)["share"] == 1.0


def test_one_candidate_detection_reproduces_one_reference_detection():
    reference = rows((0, [0, 0, 100, 100], 0.9, 0), (0, [0, 0, 100, 100], 0.8, 0))
    assert faithfulness(reference, rows((0, [0, 0, 100, 100], 0.9, 0)))["reproduced"] == 1
    assert faithfulness(rows(), rows())["share"] is None


def test_the_tally_reports_faithfulness_between_the_two_quantized_models():
    truth = truth_of({0: [Box(0, 0, 0, 50, 50)]}, count=1)
    tally = Tally(truth, ["keras", "keras_quantized", "tflite_quantized"])
    for name, x in (("keras", 0), ("keras_quantized", 0), ("tflite_quantized", 10)):
        tally.add(name, outputs_for([[([x, 0, 50, 50], 0.9, 0)]]), np.array([0]))
    found = tally.faithfulness()
    assert found is not None and found["detections"] == 1 and found["reproduced"] == 0  # IoU 40/60
    assert Tally(truth, ["keras"]).faithfulness() is None


def test_a_symbolic_link_as_the_annotation_file_is_refused_like_every_path(tmp_path):
    project = detection_project(tmp_path / "p", annotation="linked.json")
    (project / "linked.json").symlink_to(project / "annotations.json")
    with pytest.raises(ConfigError, match="key 'evaluate_annotation_file': .*linked.json is a symbolic link"):
        check(project)
