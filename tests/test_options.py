"""Each quantization option and the accuracy gate, exercised by a real run (TensorFlow + MCT)
on the small digits project: the option reaches MCT and shows in the artifacts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import JobRun, miscalibrate, read_config, run_cli, write_config

from mctq_job.artifacts import ARTIFACT_NAMES, output_dir_files
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


def constants_and_activations(model: Path) -> tuple[list[tuple[str, int]], Counter]:
    """A TFLite file's constant tensors as (dtype, element count), and its other tensors'
    dtypes, read from the flatbuffer with the schema module TensorFlow ships."""
    from tensorflow.lite.python import schema_py_generated as schema

    flat = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model.read_bytes()), 0))
    names = {value: name.lower() for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    constants, activations = [], Counter()
    for tensor in flat.subgraphs[0].tensors:
        data = flat.buffers[tensor.buffer].data
        if data is not None and len(data):
            constants.append((names[tensor.type], int(np.prod(tensor.shape))))
        else:
            activations[names[tensor.type]] += 1
    return constants, activations


def test_extra_exports_write_evaluate_and_report_float16_and_dynamic_range_files(project):
    """extra_exports: the TFLite converter's float16 and dynamic-range files are published and
    listed in manifest.json, hold what their names claim, keep the float model's accuracy, are
    about 1/2 and 1/4 of model.tflite, and are scored, sized and timed in results.json and
    report.html beside the others; the notebook's four keys stay first and unchanged."""
    import tensorflow as tf

    result, results = run_with(project, extra_exports=["float16", "dynamic_range"])
    assert result.returncode == 0, result.stdout[-3000:]
    output = project / "output"
    expected = output_dir_files("imx500", extra_exports=["float16", "dynamic_range"])
    assert {p.name for p in output.iterdir()} == set(expected)
    manifest = json.loads((output / "manifest.json").read_text())
    listed = {artifact["name"]: artifact["size"] for artifact in manifest["artifacts"]}
    float16, dynamic = output / "model_float16.tflite", output / "model_dynamic_range.tflite"
    assert listed[float16.name] == float16.stat().st_size and listed[dynamic.name] == dynamic.stat().st_size

    # float16: every float constant (weights, biases) stored as float16, computed in float32.
    float_constants, _ = constants_and_activations(output / "model.tflite")
    constants, activations = constants_and_activations(float16)
    halves = [count for dtype, count in constants if dtype == "float16"]
    assert sorted(halves) == sorted(count for dtype, count in float_constants if dtype == "float32")
    assert not any(dtype in ("float32", "int8") for dtype, _ in constants)
    assert set(activations) == {"float32"}
    # dynamic_range: the big weights int8, every activation float32, float in and out.
    constants, activations = constants_and_activations(dynamic)
    largest = max(constants, key=lambda constant: constant[1])
    assert largest[0] == "int8" and sum(count for dtype, count in constants if dtype == "int8") > 0.9 * sum(
        count for _, count in constants
    )
    assert set(activations) == {"float32"}
    interpreter = tf.lite.Interpreter(model_path=str(dynamic))
    assert interpreter.get_input_details()[0]["dtype"] == interpreter.get_output_details()[0]["dtype"] == np.float32

    assert list(results)[:4] == [
        f"top_1_accuracy_{name}" for name in ("keras", "keras_quantized", "tflite", "tflite_quantized")
    ]
    models = results["models"]
    assert list(models) == [
        "keras",
        "keras_quantized",
        "tflite",
        "tflite_quantized",
        "tflite_float16",
        "tflite_dynamic_range",
    ]
    sizes = {name: models[name]["bytes"] for name in ("tflite", "tflite_float16", "tflite_dynamic_range")}
    assert sizes == {
        "tflite": (output / "model.tflite").stat().st_size,
        "tflite_float16": float16.stat().st_size,
        "tflite_dynamic_range": dynamic.stat().st_size,
    }
    assert 0.45 <= sizes["tflite_float16"] / sizes["tflite"] <= 0.55
    assert 0.2 <= sizes["tflite_dynamic_range"] / sizes["tflite"] <= 0.3
    for name, file in (("tflite_float16", float16), ("tflite_dynamic_range", dynamic)):
        model = models[name]
        assert model["file"] == str(file) and file.name in model["description"]
        assert abs(model["top_1_accuracy"] - results["top_1_accuracy_keras"]) <= 0.05
        assert model["top_5_accuracy"] >= model["top_1_accuracy"] > 0.5
        assert sum(row["images"] for row in model["per_class"].values()) == results["image_count"]
        assert sum(count for _, _, count in model["confusion"]) == results["image_count"]
        assert model["latency"]["median_ms"] > 0 and model["inference"]["ms_per_image"] > 0
        assert model["census"]["integer_only"] is False
    assert set(results["agreement"]) == {
        "keras_vs_keras_quantized",
        "tflite_vs_tflite_quantized",
        "keras_vs_tflite_quantized",
        "keras_vs_tflite",
        "keras_quantized_vs_tflite_quantized",
    }
    page = (project / "evaluate" / "results" / "report.html").read_text()
    for name in ("tflite_float16", "tflite_dynamic_range", float16.name, dynamic.name):
        assert name in page


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
