"""Each quantization option and the accuracy gate, exercised by a real run (TensorFlow + MCT)
on the small digits project: the option reaches MCT and shows in the artifacts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import JobRun, miscalibrate, read_config, run_cli, write_config

from mctq_job.artifacts import ARTIFACT_NAMES
from mctq_job.errors import AccuracyGateError

pytestmark = pytest.mark.slow


def run_with(project: Path, *args: str, **changes) -> tuple[JobRun, dict]:
    write_config(project, {**read_config(project), **changes})
    result = run_cli(*args, cwd=project)
    results_file = project / "evaluate" / "results" / "results.json"
    return result, json.loads(results_file.read_text()) if results_file.exists() else {}


def tensor_types(model: Path) -> Counter:
    import tensorflow as tf

    return Counter(np.dtype(d["dtype"]).name for d in tf.lite.Interpreter(model_path=str(model)).get_tensor_details())


def quantize_stage(result: JobRun) -> dict:
    return next(e for e in result.named("stage.start") if e["stage"] == "quantize")


def test_tflite_platform_and_fakely_quant_export_with_a_gate_that_passes(project):
    """tflite's TPC runs (MCT's own defect repaired); fakely_quant gives a float graph with
    quantize/dequantize pairs; a generous gate passes and says so."""
    result, results = run_with(project, target_platform="tflite", export_format="fakely_quant", max_top1_drop=0.5)
    assert result.returncode == 0, result.stdout[-3000:]
    assert results["quantization"]["target_platform"] == "tflite"
    assert quantize_stage(result)["target_platform"] == "tflite"
    types = tensor_types(project / "output" / "model_quantized.tflite")
    assert "int8" not in types and types["float32"] > 0
    (gate,) = result.named("accuracy.gate")
    assert gate["passed"] is True and results["gate"] == {k: gate[k] for k in results["gate"]}
    assert abs(results["top_1_accuracy_tflite_quantized"] - results["top_1_accuracy_keras"]) <= 0.05


def test_integer_io_model_takes_int8_and_its_accuracy_is_reported(project):
    """quantized_io int8: model_quantized.tflite takes and returns int8; results.json gives the
    scale and zero point the evaluation used, and its accuracy stays MCT's."""
    import tensorflow as tf

    result, results = run_with(project, quantized_io="int8")
    assert result.returncode == 0, result.stdout[-3000:]
    interpreter = tf.lite.Interpreter(model_path=str(project / "output" / "model_quantized.tflite"))
    (source,), (sink,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert source["dtype"] == sink["dtype"] == np.int8
    io = results["quantized_io"]
    assert io["type"] == "int8" and io["input"]["dtype"] == io["output"]["dtype"] == "int8"
    assert (io["input"]["scale"], io["input"]["zero_point"]) == pytest.approx(source["quantization"])
    assert results["models"]["tflite_quantized"]["census"]["integer_only"] is True
    assert results["agreement"]["keras_quantized_vs_tflite_quantized"] >= 0.99
    assert abs(results["top_1_accuracy_tflite_quantized"] - results["top_1_accuracy_keras_quantized"]) <= 0.01


def test_gptq_with_a_newer_imx500_tpc(project, finished_run: JobRun):
    """GPTQ fine-tunes the quantized weights: the model differs from PTQ's on the same inputs."""
    result, results = run_with(project, quantization_method="gptq", gptq={"epochs": 1}, target_platform_version="4.0")
    assert result.returncode == 0, result.stdout[-3000:]
    assert results["quantization"]["method"] == "gptq" and results["quantization"]["gptq"] == {
        "epochs": 1,
        "hessian": False,
    }
    assert quantize_stage(result)["target_platform_version"] == "4.0"
    ptq_model = finished_run.cwd / "output" / "model_quantized.tflite"
    assert (project / "output" / "model_quantized.tflite").read_bytes() != ptq_model.read_bytes()
    assert "int8" in tensor_types(project / "output" / "model_quantized.tflite")
    assert abs(results["top_1_accuracy_tflite_quantized"] - results["top_1_accuracy_keras"]) <= 0.05


def test_mixed_precision_meets_its_weights_memory_target(project):
    result, results = run_with(project, mixed_precision={"weights_memory_ratio": 0.5}, target_platform_version="6.0")
    assert result.returncode == 0, result.stdout[-3000:]
    usage = results["resource_utilization"]
    assert usage["final"]["weights_memory"] <= 0.5 * usage["float_8bit"]["weights_memory"]
    assert results["quantization"]["mixed_precision"]["weights_memory_ratio"] == 0.5


def test_a_failed_gate_writes_everything_and_exits_with_its_own_code(project):
    """Calibrated on the wrong data (flat grey images), the quantized model loses accuracy;
    the command line's limit overrides the configuration's; every artifact is still written."""
    miscalibrate(project)
    termination = project / "termination-log"
    termination.touch()
    write_config(project, {**read_config(project), "max_top1_drop": 1.0, "target_platform_version": "5.0"})
    result = run_cli("--max-top1-drop", "0.05", cwd=project, env={"MCTQ_TERMINATION_LOG": str(termination)})
    assert result.returncode == AccuracyGateError.exit_code == 8, result.stdout[-3000:]
    last = result.events[-1]
    assert (last["event"], last["error"], last["exit_code"]) == ("run.failed", "accuracy_gate_failed", 8)
    assert "max_top1_drop 0.05" in last["message"] and last["top_1_drop"] > 0.05
    (gate,) = result.named("accuracy.gate")
    assert gate["passed"] is False and gate["level"] == "error"
    written = {p.name for folder in ("output", "evaluate/results") for p in (project / folder).iterdir()}
    assert written == set(ARTIFACT_NAMES)
    manifest = json.loads((project / "output" / "manifest.json").read_text())
    assert manifest["outcome"] == "accuracy_gate_failed" and manifest["config"]["max_top1_drop"] == 0.05
    assert manifest["config"]["target_platform_version"] == "5.0"
    results = json.loads((project / "evaluate" / "results" / "results.json").read_text())
    assert results["gate"]["passed"] is False
    assert termination.read_text().startswith("accuracy_gate_failed (exit 8): top-1 accuracy dropped by")


def test_with_another_mct_version_the_job_runs_unmodified_mct_and_says_so(project, finished_run: JobRun):
    """The statistics speed-up is pinned to one MCT version: with the check forced to fail, the run
    still succeeds on MCT's own code, a quantize.statistics event says so, and the model is the same."""
    import subprocess
    import sys

    code = (
        "import mctq_job.fast_statistics as f\nf.PINNED_MCT_VERSION = '0.0'\n"
        "from mctq_job.cli import main\nmain(['run'], prog_name='mctq-job')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=900)
    result = JobRun(proc.returncode, proc.stdout, proc.stderr, project)
    assert result.returncode == 0, result.stdout[-3000:]
    (statistics,) = result.named("quantize.statistics")
    assert statistics["path"] == "mct" and "0.0" in statistics["reason"] and "2.6.1" in statistics["reason"]
    (fast,) = finished_run.named("quantize.statistics")
    assert fast["path"] == "fast"
    quantized = "model_quantized.tflite"
    assert (project / "output" / quantized).read_bytes() == (finished_run.cwd / "output" / quantized).read_bytes()
