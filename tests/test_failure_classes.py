"""A bug is not a toolkit failure: an exception with the job's own code on its path ends the run
with exit 1 (internal_error) and its traceback; only what fails inside TensorFlow, MCT or another
external tool, with none of our code beneath, is exit 5 (toolkit_failure), naming the tool. A
model the export cannot handle is exit 10 (unsupported_model), an image the image library
cannot read exit 4 (invalid_input). Real runs of the real job, and the rule itself on real
call stacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import JobRun, declare_huge_jpeg, read_config, write_config

from mctq_job import config_file
from mctq_job.errors import InputDataError, InternalError, ToolkitError, UnsupportedModelError, calling


def run_with_fault(project: Path, fault: str) -> JobRun:
    """The real command line in a fresh interpreter, after ``fault`` (Python code) changed the job."""
    code = f"{fault}\nfrom mctq_job.cli import main\nmain(['run'], prog_name='mctq-job')\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return JobRun(proc.returncode, proc.stdout, proc.stderr, project)


def no_artifacts(project: Path) -> bool:
    return not any(
        (project / folder).exists() and any((project / folder).iterdir()) for folder in ("output", "evaluate/results")
    )


# --- the rule, on real call stacks: json stands for the toolkit, config_file.read_text for our code --


def caught(call) -> Exception:
    """What ``call`` raises through ``calling``."""
    with pytest.raises(Exception) as info, calling("the library"):
        call()
    return info.value


def test_a_failure_inside_the_library_alone_is_the_librarys():
    error = caught(lambda: json.loads("{"))
    assert isinstance(error, ToolkitError) and error.tool == "the library"
    assert isinstance(error.original, json.JSONDecodeError)


def test_a_failure_beneath_our_callback_is_ours_even_where_the_library_raised_it(tmp_path):
    """The library calls our code, our code calls pathlib, pathlib raises: the innermost frame
    is not ours, yet our code is on the path, so the error stays ours (a bug, exit 1)."""
    missing = tmp_path / "missing.json"
    error = caught(lambda: json.loads('{"a": 1}', object_pairs_hook=lambda pairs: config_file.read_text(missing)))
    assert type(error) is FileNotFoundError
    frames = error.__traceback__
    while frames.tb_next is not None:
        frames = frames.tb_next
    assert "pathlib" in frames.tb_frame.f_code.co_filename  # the premise: raised outside the package


def test_our_error_wrapped_by_the_library_with_raise_from_stays_ours(tmp_path):
    missing = tmp_path / "missing.json"

    def library() -> None:
        try:
            json.loads('{"a": 1}', object_pairs_hook=lambda pairs: config_file.read_text(missing))
        except OSError as exc:
            raise RuntimeError("the library failed") from exc

    assert type(caught(library)) is RuntimeError


def test_an_error_the_library_raises_while_handling_ours_is_the_librarys(tmp_path):
    """Only an explicit cause counts: an implicit __context__ says nothing about the cause."""
    missing = tmp_path / "missing.json"

    def library() -> None:
        try:
            json.loads('{"a": 1}', object_pairs_hook=lambda pairs: config_file.read_text(missing))
        except OSError:
            raise RuntimeError("the library failed on its own")  # noqa: B904 - the point of the test

    assert isinstance(caught(library), ToolkitError)


# --- real runs --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bug_in_the_jobs_code_called_by_mct_is_exit_1_with_its_traceback(project):
    """Calibration batches that point past the image list: the IndexError is raised in the job's
    data generator while MCT calls it, so it is the job's bug, not MCT's failure."""
    fault = (
        "import mctq_job.calibrate as c\n"
        "drawn = c.draw\n"
        "c.draw = lambda n, config: c.Drawn([b + n for b in drawn(n, config).batches], n)\n"
    )
    result = run_with_fault(project, fault)
    assert result.returncode == InternalError.exit_code == 1, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "internal_error" and failed["stage"] == "quantize"
    assert "IndexError" in failed["message"] and "bug in mctq-job" in failed["message"]
    frames = failed["exception"][-1]["frames"]
    assert frames[-1]["filename"].endswith("mctq_job/calibrate.py")
    assert no_artifacts(project)


@pytest.mark.slow
def test_a_fault_beneath_the_calibration_callback_raised_inside_numpy_is_exit_1(project):
    """Decoding that returns images of two sizes: np.stack in the job's batch loader raises
    inside numpy, while MCT calls the calibration generator. The innermost frame is numpy's, MCT
    is above it, and the job's code in between: the job's bug (exit 1), not MCT's failure."""
    fault = (
        "import itertools\n"
        "import mctq_job.images as i\n"
        "decoded, grow = i.preprocess_file, itertools.cycle([0, 1])\n"
        "i.preprocess_file = lambda path, size, spec: decoded(path, size + next(grow), spec)\n"
    )
    result = run_with_fault(project, fault)
    assert result.returncode == InternalError.exit_code == 1, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "internal_error" and failed["stage"] == "quantize"
    assert "ValueError" in failed["message"] and "bug in mctq-job" in failed["message"]
    files = [frame["filename"] for frame in failed["exception"][-1]["frames"]]
    assert "/numpy/" in files[-1], files[-3:]  # raised inside numpy ...
    assert any("/model_compression_toolkit/" in f for f in files)  # ... beneath MCT ...
    assert any(f.endswith("mctq_job/images.py") for f in files)  # ... with our loader between
    assert no_artifacts(project)


@pytest.mark.slow
def test_a_layer_the_full_integer_export_refuses_is_unsupported_model_naming_it(project):
    """A multiplication by a constant vector: the imx500 TPC 4.0 quantizes that constant as a
    weight of the multiply, which the full-integer export cannot make int8. The run ends with
    unsupported_model (exit 10, failing the Kubernetes Job at once), naming the layer."""
    import numpy as np
    import tensorflow as tf

    config = read_config(project)
    classes = len(json.loads((project / config["evaluate_label_file"]).read_text()))
    size, layers = config["input_tensor_size"], tf.keras.layers
    inputs = tf.keras.Input((size, size, 3))
    hidden = layers.Conv2D(8, 3, activation="relu")(inputs)
    hidden = hidden * tf.constant(np.linspace(0.5, 1.5, 8, dtype=np.float32))
    model = tf.keras.Model(inputs, layers.Dense(classes)(layers.GlobalAveragePooling2D()(hidden)))
    (scaled,) = [layer.name for layer in model.layers if type(layer).__name__ == "TFOpLambda"]
    model.save(project / "model" / "scaled.keras")
    write_config(project, {**config, "source_keras_model": "model/scaled.keras", "target_platform_version": "4.0"})

    result = run_with_fault(project, "")
    assert result.returncode == UnsupportedModelError.exit_code == 10, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "unsupported_model" and failed["stage"] == "export" and failed["layer"] == scaled
    assert f"layer '{scaled}' has no int8 TFLite form" in failed["message"]
    assert "constant operand" in failed["message"] and "the kernel of Conv2D" in failed["message"]
    assert "exception" not in failed  # not a bug: no traceback
    assert no_artifacts(project)


@pytest.mark.slow
def test_a_model_whose_outputs_the_task_cannot_read_is_unsupported_model_naming_them(project):
    """A classifier with a second head: the classification task reads one output of one score
    per class, so the model stage refuses it as unsupported_model, naming both outputs."""
    import tensorflow as tf

    config = read_config(project)
    size, layers = config["input_tensor_size"], tf.keras.layers
    inputs = tf.keras.Input((size, size, 3))
    features = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs))
    model = tf.keras.Model(inputs, [layers.Dense(10, name="scores")(features), layers.Dense(4, name="box")(features)])
    model.save(project / "model" / "two_heads.keras")
    write_config(project, {**config, "source_keras_model": "model/two_heads.keras"})

    result = run_with_fault(project, "")
    assert result.returncode == UnsupportedModelError.exit_code, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "unsupported_model" and failed["stage"] == "model"
    assert failed["outputs"] == ["scores", "box"] and "one output of one score per class" in failed["message"]
    assert no_artifacts(project)


@pytest.mark.slow
def test_an_image_library_failure_of_a_new_kind_is_exit_4_naming_the_file(project):
    """An evaluation JPEG declaring 60000 x 60000 pixels passes the cheap first-bytes check and
    makes PIL raise DecompressionBombError (neither OSError nor ValueError) during evaluation."""
    victim = declare_huge_jpeg(sorted((project / "dataset" / "validation").rglob("*.jpg"))[0])
    result = run_with_fault(project, "")
    assert result.returncode == InputDataError.exit_code == 4, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "invalid_input" and failed["stage"] == "evaluate" and failed["file"] == str(victim)
    assert f"cannot decode image {victim}: DecompressionBombError: " in failed["message"]
    assert no_artifacts(project)


@pytest.mark.slow
def test_a_bug_in_a_stage_without_toolkit_calls_is_exit_1(project):
    """report.html's renderer failing is the job's own failure, whatever the exception type."""
    result = run_with_fault(project, "import mctq_job.report_html as r\nr.render = lambda results: 1 / 0\n")
    assert result.returncode == 1, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "internal_error" and failed["stage"] == "report"
    assert "ZeroDivisionError" in failed["message"] and failed["exception"]
    assert no_artifacts(project)


@pytest.mark.slow
def test_mct_failing_is_exit_5_naming_mct_and_quoting_it(project):
    """A weights-memory target no bit-width mix can reach: MCT itself raises, so the run is a
    toolkit failure (exit 5, retried by Kubernetes), naming MCT and quoting its message."""
    write_config(project, {**read_config(project), "mixed_precision": {"weights_memory_ratio": 0.01}})
    result = run_with_fault(project, "")
    assert result.returncode == ToolkitError.exit_code == 5, result.stdout[-2000:]
    failed = result.events[-1]
    assert failed["error"] == "toolkit_failure" and failed["stage"] == "quantize" and failed["tool"] == "MCT"
    assert "cannot be quantized to meet the specified resource utilization" in failed["message"]
    assert no_artifacts(project)
