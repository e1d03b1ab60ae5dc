"""The IMX500 package of detectors through the real job and Sony's real converter: a small
project built by examples/detection.py once per module; its combined-NMS detector and its
SSDPostProcess detector each packaged in one run (the post-processing on the chip, the fit
facts in results.json), and a detector that decodes its boxes with tf.exp, which the converter
refuses: warned about in the model stage, then exit 10 (unsupported_model) naming the operator."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import needs
import pytest
from conftest import JobRun, run_cli
from test_detection_example import detection

from mctq_job import artifacts
from mctq_job.errors import UnsupportedModelError
from mctq_job.events import Event

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converter() -> str:
    return needs.imx500_converter()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A small demo project (briefly trained: the package, not the mAP, is under test)."""
    dest = tmp_path_factory.mktemp("detimx") / "demo"
    detection.build(dest, n_train=200, epochs=2, n_eval=12, n_calibration=16, log=lambda _: None)
    config = json.loads((dest / "configuration.json").read_text())
    config.update(iteration_count=1, imx500={"package": True})
    (dest / "configuration.json").write_text(json.dumps(config))
    return dest


def _run(project: Path, name: str, model: str, converter: str) -> tuple[JobRun, Path, Path]:
    """The project's configuration with ``model``, its own output folders; one real run."""
    config = json.loads((project / "configuration.json").read_text())
    config.update(source_keras_model=model, output_dir=f"./out_{name}", evaluate_result_dir=f"./results_{name}")
    (project / f"{name}.json").write_text(json.dumps(config))
    run = run_cli("run", "--config", str(project / f"{name}.json"), cwd=project, env={"MCTQ_IMXCONV": converter})
    return run, project / f"out_{name}", project / f"results_{name}"


@pytest.fixture(scope="module")
def nms_package(project, converter):
    return _run(project, "nms", "./model/model.h5", converter)


@pytest.fixture(scope="module")
def ssd_package(project, converter):
    return _run(project, "ssd", "./model/model_ssd.keras", converter)


def exp_detector(source: Path, destination: Path) -> None:
    """The trained combined-NMS detector with its box sizes decoded as anchor * exp(t) (the
    SSD/YOLOv2 way) instead of the example's sigmoid square: otherwise the same operators
    and the same NMS, which the converter takes; only the exp is in the way."""
    import numpy as np
    import tensorflow as tf

    model = tf.keras.models.load_model(str(source), compile=False)
    layers = tf.keras.layers
    cells, _ = detection._grid_offsets()
    step = np.float32(detection.STRIDE / detection.INPUT_SIZE)
    centre = model.get_layer("box_yx_sigmoid").output * (2 * step) + (cells - 0.5) * step
    half = tf.exp(model.get_layer("box_hw_flat").output) * np.float32(detection.ANCHOR / detection.INPUT_SIZE / 2)
    boxes = layers.Concatenate(name="exp_boxes")([layers.Subtract()([centre, half]), layers.Add()([centre, half])])
    nms = tf.image.combined_non_max_suppression(
        tf.expand_dims(boxes, 2),
        model.get_layer("scores").output,
        100,
        100,
        iou_threshold=0.5,
        score_threshold=0.01,
        clip_boxes=False,
    )
    outputs = [nms.nmsed_boxes, nms.nmsed_scores, nms.nmsed_classes, nms.valid_detections]
    tf.keras.Model(model.inputs, outputs).save(str(destination))


@pytest.fixture(scope="module")
def exp_refused(project, converter):
    exp_detector(project / "model" / "model.h5", project / "model" / "model_exp.h5")
    return _run(project, "exp", "./model/model_exp.h5", converter)


def _results(results_dir: Path) -> dict:
    return json.loads((results_dir / artifacts.RESULTS_FILE).read_text())


def _chip_outputs(dnn_params: Path) -> list[tuple[str, list[int]]]:
    """dnnParams.xml's output tensors: (name, dimensions), in the converter's ordinal order."""
    tensors = ET.parse(dnn_params).getroot().iter("outputTensor")
    ordered = sorted(tensors, key=lambda t: int(t.get("ordinal", "0")))
    return [(t.get("name", ""), [int(d.get("size", "0")) for d in t.iter("dimension")]) for t in ordered]


@pytest.mark.parametrize(
    ("package", "layer_name"),
    [("nms_package", "combined_non_max_suppression"), ("ssd_package", "ssd_post_process")],
)
def test_a_detector_is_packaged_with_its_post_processing_on_the_chip(package, layer_name, request):
    """Exit 0; every IMX500 artifact published and listed; the chip's outputs are the four
    detection outputs of the post-processing (boxes, scores, classes, count) at the model's own
    maximum number of detections, not the network's raw tensors."""
    run, output, results_dir = request.getfixturevalue(package)
    assert run.returncode == 0, run.stdout[-3000:]
    names = set(artifacts.output_dir_files("imx500", imx500_package=True))
    assert {p.name for p in output.iterdir()} == names
    manifest = json.loads((output / artifacts.MANIFEST_FILE).read_text())
    assert names - {artifacts.MANIFEST_FILE} <= {a["name"] for a in manifest["artifacts"]}
    with zipfile.ZipFile(output / artifacts.PACKAGE_FILE) as zipped:
        assert zipped.testzip() is None and artifacts.DNN_PARAMS_FILE in zipped.namelist()
    results = _results(results_dir)
    detections = results["detection"]["post_processing"]
    most = detections.get("max_total_size") or detections.get("max_detections")
    chip = _chip_outputs(output / artifacts.DNN_PARAMS_FILE)
    assert sorted(dims for _, dims in chip) == sorted([[most, 4], [most], [most], [1]]), chip
    assert all(layer_name in name for name, _ in chip), chip
    assert not run.named(Event.IMX500_REFUSAL_EXPECTED.value)  # nothing the converter refuses


@pytest.mark.parametrize("package", ["nms_package", "ssd_package"])
def test_the_fit_facts_are_the_memory_reports(package, request):
    run, output, results_dir = request.getfixturevalue(package)
    results = _results(results_dir)
    chip = results["imx500"]
    report = json.loads((output / artifacts.MEMORY_REPORT_FILE).read_text())
    section = report.get("Memory Report", report)
    assert chip["fit_in_chip"] is section["Fit In Chip"] is True
    assert (
        chip["memory_usage_bytes"]
        == chip["model_memory_bytes"] + chip["runtime_memory_bytes"] + chip["reserved_memory_bytes"]
    )
    assert 0 < chip["utilization"] < 0.5 and chip["converter_version"]
    # the package's evaluation is the detection task's: mAP keys for the four models
    assert all(0 <= results[f"map_50_{m}"] <= 1 for m in ("keras", "keras_quantized", "tflite", "tflite_quantized"))
    html = (results_dir / artifacts.REPORT_FILE).read_text()
    assert "IMX500 package" in html and "fits the IMX500" in html


def test_the_converter_refusing_tf_exp_is_unsupported_model_naming_it(exp_refused):
    """[USOP] TFOpLambda::math.exp: exit 10 from the imx500 stage (not a toolkit failure that
    Kubernetes retries), naming the operator and what to use instead; nothing published."""
    run, output, results_dir = exp_refused
    assert run.returncode == UnsupportedModelError.exit_code, run.stdout[-3000:]
    failed = run.events[-1]
    assert failed["error"] == "unsupported_model" and failed["stage"] == "imx500"
    assert failed["refused"] == ["TFOpLambda::math.exp"] and failed["converter_code"] == "USOP"
    message = failed["message"]
    assert "[USOP]" in message and "TFOpLambda::math.exp" in message
    assert "SSDPostProcess" in message and "sigmoid" in message and "imx500.package" in message
    for folder in (output, results_dir):
        assert not folder.exists() or not list(folder.iterdir())


def test_the_model_stage_warns_of_tf_exp_before_quantizing(exp_refused):
    """The warning comes from the model stage, before the quantize stage starts, and names the
    layer the converter later refuses."""
    run, _, _ = exp_refused
    events = run.events
    warnings = [i for i, e in enumerate(events) if e["event"] == Event.IMX500_REFUSAL_EXPECTED.value]
    assert len(warnings) == 1, [e for e in events if e["level"] == "warning"]
    warning = events[warnings[0]]
    assert warning["level"] == "warning" and warning["stage"] == "model"
    assert [(f["layer"], f["operator"]) for f in warning["operators"]] == [("tf.math.exp", "TFOpLambda::math.exp")]
    quantize = next(i for i, e in enumerate(events) if e["event"] == "stage.start" and e["stage"] == "quantize")
    assert warnings[0] < quantize


def test_expected_refusals_find_a_new_axis_slice_and_exp_not_expand_dims_or_ssd(project, tmp_path):
    """The model stage's check on its own: a slice adding an axis (as built and once reloaded
    from .h5 and .keras) and tf.exp are found; tf.expand_dims and edgemdt_cl's SSDPostProcess
    (whose exp the converter takes) are not."""
    import tensorflow as tf
    from edgemdt_cl.keras import custom_layers_scope

    from mctq_job.imx500 import expected_refusals

    x = tf.keras.Input((16, 4))
    sliced = tf.keras.Model(x, [x[:, :, None, :] * 2.0, tf.exp(x[:, :, :2])])
    # (layer names depend on what else this process built: read each layer's class instead)
    found = sorted((type(sliced.get_layer(f["layer"])).__name__, f["operator"]) for f in expected_refusals(sliced))
    assert found == [
        ("SlicingOpLambda", "SlicingOpLambda with a new axis"),
        ("TFOpLambda", "TFOpLambda::math.exp"),
    ]
    for suffix in (".h5", ".keras"):
        sliced.save(str(tmp_path / f"m{suffix}"))
        reloaded = tf.keras.models.load_model(str(tmp_path / f"m{suffix}"), compile=False)
        refusals = expected_refusals(reloaded)
        assert sorted((type(reloaded.get_layer(f["layer"])).__name__, f["operator"]) for f in refusals) == found
    assert expected_refusals(tf.keras.Model(x, tf.expand_dims(x, 2))) == []
    with custom_layers_scope():
        ssd = tf.keras.models.load_model(str(project / "model" / "model_ssd.keras"), compile=False)
    assert expected_refusals(ssd) == []
    assert expected_refusals(tf.keras.models.load_model(str(project / "model" / "model.h5"), compile=False)) == []


#: Converter 3.19.2's own lines for a detector feeding its NMS boxes[:, :, None, :] (MCT's
#: export of the demo's network with that slice instead of tf.expand_dims), as it printed them.
INVOP_LINES = [
    "2026-11-30 00:05:14,369 ERROR : CODE: [INVOP] The network is not aligned with SDSP converter's "
    "restrictions. Errors are:",
    "Node [Framework.tensorflow] op: keras.src.layers.core.tf_op_layer.SlicingOpLambda, id: "
    "tf.__operators__.getitem, errors:",
    "\tParam error - param: slice_spec for axis 2, value: None, reason: new axis is not supported "
    "[/opt/imx500-venv/lib/python3.11/site-packages/uni/common/logger.py:185]",
    "2026-11-30 00:05:15,001 INFO : something after it",
]


def test_an_invop_refusal_names_the_node_its_reason_and_tf_expand_dims():
    """The [INVOP] message spans several lines; the error names the refused node with the
    converter's reason and what to use instead."""
    from mctq_job.imx500 import Converter, _Refusal

    refusal = _Refusal()
    for line in INVOP_LINES:
        refusal.feed(line)
    error = refusal.error(Converter(Path("/opt/imxconv-tf"), "3.19.2"), 3, INVOP_LINES)
    assert error.code == "INVOP"
    assert error.refused == ["SlicingOpLambda (tf.__operators__.getitem): new axis is not supported"]
    assert "tf.expand_dims(boxes, 2)" in str(error) and "something after it" not in str(error)
