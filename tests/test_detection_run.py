"""`mctq-job run` on real detectors built by examples/detection.py (a small build, once per
module): a detector ending in combined NMS (with the mAP gate failing), the same network ending
in edgemdt_cl's SSDPostProcess, and YOLO-format labels of the same images. The figures are
checked against pycocotools run here on the float model's detections computed independently
of the job (the example's own letterbox, the interpreter read by signature name)."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ENTRYPOINT, LiveRun, run_cli
from test_detection_example import detection

from mctq_job.errors import AccuracyGateError, Interrupted

pytestmark = pytest.mark.slow

MODELS = ("keras", "keras_quantized", "tflite", "tflite_quantized")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("detection") / "demo"
    detection.build(dest, n_train=600, epochs=8, n_eval=30, n_calibration=16, log=lambda _: None)
    config = json.loads((dest / "configuration.json").read_text())
    config["iteration_count"] = 1
    (dest / "configuration.json").write_text(json.dumps(config))
    return dest


def _variant(project: Path, name: str, **change) -> Path:
    """A copy of the project's configuration (same data and models) with ``change``."""
    config = json.loads((project / "configuration.json").read_text())
    config.update(change, output_dir=f"./out_{name}", evaluate_result_dir=f"./results_{name}")
    (project / f"{name}.json").write_text(json.dumps(config))
    return project / f"{name}.json"


def _results(project: Path, name: str) -> dict:
    return json.loads((project / f"results_{name}" / "results.json").read_text())


@pytest.fixture(scope="module")
def nms_run(project):
    """The combined-NMS detector with a gate no quantized detector passes: exit 8, all written."""
    run = run_cli("run", "--config", str(_variant(project, "nms", max_map_drop=0.0)), cwd=project)
    return run, _results(project, "nms")


@pytest.fixture(scope="module")
def ssd_run(project):
    config = _variant(project, "ssd", source_keras_model="./model/model_ssd.keras", max_map_drop=1.0)
    run = run_cli("run", "--config", str(config), cwd=project)
    return run, _results(project, "ssd")


def test_a_combined_nms_detector_runs_end_to_end_with_the_map_keys(nms_run, project):
    run, results = nms_run
    assert results["task"] == "detection"
    assert list(results)[:8] == [f"map_50_95_{m}" for m in MODELS] + [f"map_50_{m}" for m in MODELS]
    assert not any(key.startswith("top_1_accuracy") for key in results) and "agreement" not in results
    for model in MODELS:
        assert 0 <= results[f"map_50_95_{model}"] <= results[f"map_50_{model}"] <= 1
        assert results["detection"]["models"][model]["map_50_95"] == results[f"map_50_95_{model}"]
    assert results["map_50_keras"] > 0.1, results["detection"]["models"]["keras"]
    # the float cut file + the model's NMS in Python is the float Keras model
    assert abs(results["map_50_95_tflite"] - results["map_50_95_keras"]) <= 0.002
    assert abs(results["map_50_95_tflite_quantized"] - results["map_50_95_keras_quantized"]) <= 0.05
    post = results["detection"]["post_processing"]
    assert post["kind"] == "combined_non_max_suppression" and post["iou_threshold"] == 0.5
    assert post["max_total_size"] == 100 and post["clip_boxes"] is False
    assert (
        "tf.image.combined_non_max_suppression(tf.expand_dims(boxes, 2), scores"
        in (results["detection"]["deployer_runs"])
    )
    assert results["detection"]["faithfulness"]["detections"] > 0


def test_model_quantized_tflite_is_integer_only_with_boxes_and_scores_apart(nms_run, project):
    import tensorflow as tf

    _, results = nms_run
    quantized = results["models"]["tflite_quantized"]
    assert quantized["census"]["integer_only"] is True
    assert set(quantized["outputs"]) == {"boxes", "scores"}
    boxes, scores = quantized["outputs"]["boxes"], quantized["outputs"]["scores"]
    assert boxes["computed_as"]["dtype"] == scores["computed_as"]["dtype"] == "int8"
    assert boxes["computed_as"]["scale"] != scores["computed_as"]["scale"]  # each its own grid
    runner = tf.lite.Interpreter(model_path=quantized["file"]).get_signature_runner()
    assert set(runner.get_output_details()) == {"boxes", "scores"}
    assert set(results["models"]["tflite"]["outputs"]) == {"boxes", "scores"}
    assert "NMS" not in json.dumps(quantized["census"]["operators"]).upper()


def test_the_map_gate_fails_with_exit_8_and_everything_written(nms_run, project):
    run, results = nms_run
    gate = results["gate"]
    assert gate["map_drop"] > 0 and gate["max_map_drop"] == 0 and gate["passed"] is False
    assert "top_1_drop" not in gate
    assert run.returncode == AccuracyGateError.exit_code, run.stdout[-3000:]
    assert run.events[-1]["event"] == "run.failed" and "max_map_drop" in run.events[-1]["message"]
    expected = (results["map_50_95_keras"] - results["map_50_95_tflite_quantized"]) / results["map_50_95_keras"]
    assert gate["map_drop"] == pytest.approx(expected, abs=1e-9)
    published = {p.name for p in (project / "out_nms").iterdir()}
    assert {"model.tflite", "model_quantized.tflite", "model_quantized.keras", "manifest.json"} <= published
    manifest = json.loads((project / "out_nms" / "manifest.json").read_text())
    assert manifest["outcome"] == AccuracyGateError.kind
    assert run.named("stage.start") and "diagnose" in {e["stage"] for e in run.named("stage.start")}


def test_the_demo_detector_is_diagnosed_up_to_its_nms_without_findings(nms_run, project):
    """The diagnosis runs on a detector: every holder up to the NMS named by the float model's
    layers, the cut model_quantized.tflite compared where the interpreter exposes the tensors,
    and no finding on the healthy demo; the failing gate's report opens with the mAP drop."""
    _, results = nms_run
    diagnosis = results["diagnosis"]
    layers = {row["layer"]: row for row in diagnosis["layers"]}
    assert diagnosis["findings"] == [] and diagnosis["unmapped"] == []
    assert {"image", "boxes", "scores", "box_min", "box_max"} <= set(layers)
    assert not any("non_max_suppression" in name for name in layers)
    assert layers["boxes"]["slices"] and all(row["sqnr_db"] is not None for row in diagnosis["layers"])
    assert any(row["tflite_compared"] for row in diagnosis["layers"])
    assert results["verdict"] is None  # mAP has no per-image pairs for an interval
    page = (project / "results_nms" / "report.html").read_text()
    opening = page.split('<p class="verdict">', 1)[1].split("</p>", 1)[0]
    assert (
        opening.startswith("Quantization cost ") and "mAP@[.5:.95]" in opening and "no confidence interval" in opening
    )


def test_recovery_on_a_detector_scores_attempts_by_map_and_ends_within_its_budget(project):
    """recover with max_map_drop: one attempt at most, scored by mAP@[.5:.95]; a gate of 0 no
    quantized detector passes, so it ends honestly with exit 8 and the attempt's figures."""
    config = _variant(project, "rec", max_map_drop=0.0, recover={"max_attempts": 1, "max_seconds": 600})
    run = run_cli("run", "--config", str(config), cwd=project)
    results = _results(project, "rec")
    assert run.returncode == AccuracyGateError.exit_code, run.stdout[-3000:]
    recovery = results["recovery"]
    assert recovery["metric"] == "map_50_95" and recovery["max_map_drop"] == 0.0
    assert recovery["reference_map_50_95"] == results["map_50_95_keras"]
    assert recovery["baseline_map_50_95"] == results["map_50_95_tflite_quantized"]
    assert len(recovery["attempts"]) == 1 and recovery["winner"] is None and recovery["seconds"] <= 600
    attempt = recovery["attempts"][0]
    assert attempt.get("top_1") is None and attempt["outcome"] in ("over_budget", "rejected_on_subset", "failed")
    if attempt["outcome"] != "failed":
        assert 0 <= attempt["subset_map_50_95"] <= 1
    if attempt["map_50_95"] is not None:
        expected = (recovery["reference_map_50_95"] - attempt["map_50_95"]) / recovery["reference_map_50_95"]
        assert attempt["map_drop"] == pytest.approx(expected, abs=1e-9)
    assert "recovery made 1 attempt" in run.events[-1]["message"]
    page = (project / "results_rec" / "report.html").read_text()
    assert "<h2>Recovery</h2>" in page and "subset mAP@[.5:.95]" in page


def test_the_report_shows_the_map_table_per_class_change_and_drawn_samples(nms_run, project):
    _, results = nms_run
    page = (project / "results_nms" / "report.html").read_text()
    for heading in ("Detection accuracy (COCO, pycocotools)", "Per-class AP change", "Sample detections"):
        assert f"<h2>{heading}</h2>" in page
    assert "Top-1" not in page and "Confusion" not in page
    samples = results["detection"]["samples"]
    assert 0 < len(samples) <= 4 and all(s["truth"] for s in samples)
    assert page.count('alt="evaluation image with boxes"') == len(samples)


def test_the_figures_are_pycocotools_on_the_float_models_own_detections(nms_run, project):
    """The float file's detections recomputed here (the example's letterbox, outputs read by
    name, the model's NMS parameters), scored by pycocotools on the project's COCO file."""
    import contextlib
    import io

    import tensorflow as tf
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, results = nms_run
    post = results["detection"]["post_processing"]
    labels = json.loads((project / "dataset" / "labels.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(project / "dataset" / "instances.json"))
    category = {labels[c["name"]]: c["id"] for c in truth.dataset["categories"]}
    runner = tf.lite.Interpreter(model_path=results["models"]["tflite"]["file"]).get_signature_runner()
    (input_name, _), *_ = runner.get_input_details().items()
    found = []
    for entry in truth.dataset["images"]:
        with Image.open(project / "dataset" / "evaluation" / entry["file_name"]) as opened:
            image = opened.convert("RGB")
        canvas, scale, pad_x, pad_y = detection.letterbox(image, 128)
        pixels = np.asarray(canvas, np.float32)[None] / 127.5 - 1  # MobileNet's normalization
        out = runner(**{input_name: pixels})
        nms = tf.image.combined_non_max_suppression(
            out["boxes"][:, :, None, :],
            out["scores"],
            **{k: post[k] for k in ("max_output_size_per_class", "max_total_size", "iou_threshold", "score_threshold")},
            pad_per_class=False,
            clip_boxes=False,
        )
        count = int(nms.valid_detections[0])
        for box, score, label in zip(
            nms.nmsed_boxes[0, :count].numpy(),
            nms.nmsed_scores[0, :count].numpy(),
            nms.nmsed_classes[0, :count].numpy(),
            strict=True,
        ):
            y0, x0, y1, x1 = box * 128
            x0, x1 = np.clip([(x0 - pad_x) / scale, (x1 - pad_x) / scale], 0, image.width)
            y0, y1 = np.clip([(y0 - pad_y) / scale, (y1 - pad_y) / scale], 0, image.height)
            found.append(
                {
                    "image_id": entry["id"],
                    "category_id": category[int(label)],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        scored = COCOeval(truth, truth.loadRes(found), "bbox")
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    assert results["map_50_95_tflite"] == pytest.approx(scored.stats[0], abs=0.002)
    assert results["map_50_tflite"] == pytest.approx(scored.stats[1], abs=0.002)


def test_an_ssd_postprocess_detector_runs_with_codes_and_logits_apart(ssd_run):
    run, results = ssd_run
    assert run.returncode == 0, run.stdout[-3000:]
    post = results["detection"]["post_processing"]
    assert post["kind"] == "SSDPostProcess" and post["anchors"] == 256
    quantized = results["models"]["tflite_quantized"]
    assert set(quantized["outputs"]) == {"box_codes", "class_logits"} and quantized["census"]["integer_only"]
    assert abs(results["map_50_95_tflite"] - results["map_50_95_keras"]) <= 0.002
    assert results["map_50_keras"] > 0.1
    assert results["gate"]["passed"] is True and "SSDPostProcess" in results["detection"]["deployer_runs"]


def test_yolo_labels_score_the_same_as_the_coco_file(nms_run, project):
    """The COCO ground truth written as YOLO label files: the same boxes, the same figures."""
    coco = json.loads((project / "dataset" / "instances.json").read_text())
    labels = json.loads((project / "dataset" / "labels.json").read_text())
    index = {c["id"]: labels[c["name"]] for c in coco["categories"]}
    folder = project / "yolo"
    shutil.rmtree(folder, ignore_errors=True)
    by_image: dict[int, list[str]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for entry in coco["images"]:
        w, h = entry["width"], entry["height"]
        lines = [
            f"{index[a['category_id']]} {(a['bbox'][0] + a['bbox'][2] / 2) / w:.10f} "
            f"{(a['bbox'][1] + a['bbox'][3] / 2) / h:.10f} {a['bbox'][2] / w:.10f} {a['bbox'][3] / h:.10f}"
            for a in by_image.get(entry["id"], [])
        ]
        path = folder / Path(entry["file_name"]).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + ("\n" if lines else ""))
    run = run_cli("run", "--config", str(_variant(project, "yolo", evaluate_annotation_file="./yolo")), cwd=project)
    assert run.returncode == 0, run.stdout[-3000:]
    results, reference = _results(project, "yolo"), nms_run[1]
    assert results["detection"]["annotations"] == "yolo"
    for model in ("keras", "tflite"):
        assert results[f"map_50_95_{model}"] == pytest.approx(reference[f"map_50_95_{model}"], abs=0.001)
        assert results[f"map_50_{model}"] == pytest.approx(reference[f"map_50_{model}"], abs=0.001)


def test_sigterm_during_detection_evaluation_keeps_the_older_files_and_leaves_nothing_partial(project):
    """Stopped once the detector's evaluation starts (its files staged, not published): exit 143,
    the previous run's file as it was, no temporary file, no results.json."""
    config = _variant(project, "sigterm")
    out = project / "out_sigterm"
    out.mkdir()
    (out / "model_quantized.tflite").write_bytes(b"previous run")
    job = LiveRun([sys.executable, str(ENTRYPOINT), "run", "--config", str(config)], cwd=project)
    job.until(lambda e: e["event"] == "stage.start" and e.get("stage") == "evaluate")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")]  # staged, not yet published
    job.proc.send_signal(signal.SIGTERM)
    assert job.finish() == Interrupted(signal.SIGTERM).exit_code
    assert job.events[-1]["event"] == "run.failed" and job.events[-1]["error"] == "interrupted_sigterm"
    assert sorted(p.name for p in out.iterdir()) == ["model_quantized.tflite"]
    assert (out / "model_quantized.tflite").read_bytes() == b"previous run"
    assert not (project / "results_sigterm" / "results.json").exists()
