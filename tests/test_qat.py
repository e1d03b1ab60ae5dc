"""Quantization-aware training (``quantization_method`` ``qat``) on the digits project, whose
calibration images sit in class folders: MCT's Keras QAT trains, the job exports a fully integer
model_quantized.tflite, and two runs of one configuration give the same bytes."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import miscalibrate, read_config, run_cli, write_config

from mctq_job.errors import InputDataError

pytestmark = pytest.mark.slow
QAT = {"epochs": 2, "learning_rate": 0.001, "images": 160}


def test_qat_trains_exports_an_integer_only_file_and_reproduces_its_bytes(project):
    write_config(project, {**read_config(project), "quantization_method": "qat", "qat": QAT})
    digests, losses = [], []
    for _ in range(2):
        run = run_cli(cwd=project)
        assert run.returncode == 0, run.stdout[-3000:]
        digests.append(hashlib.sha256((project / "output" / "model_quantized.tflite").read_bytes()).hexdigest())
        epochs = run.named("quantize.epoch")
        assert [(e["epoch"], e["epochs"]) for e in epochs] == [(1, 2), (2, 2)]
        losses.append([e["loss"] for e in epochs])
        training = [e for e in run.named("progress") if e.get("task") == "training"]
        assert training[0]["current"] == 0 and training[-1]["current"] == training[-1]["total"] == 2
    assert digests[0] == digests[1] and losses[0] == losses[1]  # deterministic for the seed
    results = json.loads((project / "evaluate" / "results" / "results.json").read_text())
    assert results["quantization"]["method"] == "qat" and results["quantization"]["qat"] == QAT
    census = results["models"]["tflite_quantized"]["census"]
    assert census["integer_only"] is True, census
    assert (project / "output" / "model_quantized.keras").is_file()
    assert results["top_1_accuracy_keras"] - results["top_1_accuracy_tflite_quantized"] <= 0.02


def test_qat_refuses_calibration_images_without_class_folders(project):
    miscalibrate(project)  # grey images straight in dataset_image_dir: no labels
    write_config(project, {**read_config(project), "quantization_method": "qat"})
    run = run_cli("validate", cwd=project)
    assert run.returncode == InputDataError.exit_code, run.stdout[-3000:]
    message = run.events[-1]["message"]
    assert "key 'quantization_method': 'qat' trains on the calibration images" in message
    assert "no class sub-folders named like the label file's classes" in message
