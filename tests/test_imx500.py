"""The IMX500 converter driven for real: finding it, converting the digits model, the Keras
export that feeds it, a model too large for the chip, and stopping a conversion.

The converter lives outside the job's venv (`make imx500-venv`); without it these tests skip,
and with MCTQ_REQUIRE_IMX500=1 (CI) they fail instead."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from mctq_job import imx500
from mctq_job.cleanups import Cleanups
from mctq_job.config import TPC_VERSIONS
from mctq_job.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
VENV_CONVERTER = ROOT / ".venv-imx500" / "bin" / imx500.EXECUTABLE
REQUIRED = os.environ.get("MCTQ_REQUIRE_IMX500") == "1"
IMAGE_SIDE = 32  # the digits model's input


def pinned_converter_version() -> str:
    lock = (ROOT / "requirements-imx500.lock").read_text()
    return re.search(r"^imx500-converter==(\S+)$", lock, re.MULTILINE).group(1)


@pytest.fixture(scope="session")
def converter() -> imx500.Converter:
    environ = dict(os.environ)
    if imx500.ENV not in environ and VENV_CONVERTER.exists():
        environ[imx500.ENV] = str(VENV_CONVERTER)
    try:
        return imx500.find_converter(environ)
    except ConfigError as exc:
        if REQUIRED:
            pytest.fail(f"MCTQ_REQUIRE_IMX500=1 but {exc.message}")
        pytest.skip(f"no IMX500 converter (make imx500-venv installs it): {exc.message}")


# ---------------------------------------------------------------------------------------
# Finding the converter


def test_find_converter_from_environment_variable(converter):
    found = imx500.find_converter({imx500.ENV: str(converter.path), "PATH": ""})
    assert found.path == converter.path
    assert found.version == pinned_converter_version()


def test_find_converter_on_path(converter):
    found = imx500.find_converter({"PATH": str(converter.path.parent)})
    assert found.path == converter.path.absolute()
    assert found.version == converter.version


def test_missing_converter_is_a_config_error_that_says_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError) as caught:
        imx500.find_converter({"PATH": str(tmp_path)})
    error = caught.value
    assert error.exit_code == 3
    assert error.context["key"] == "imx500.package"
    assert "imx500.package" in error.message and imx500.EXECUTABLE in error.message
    assert "make imx500-venv" in error.message and "mctq-job:imx500" in error.message
    assert "licence" in error.message


def test_converter_named_by_the_variable_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="MCTQ_IMXCONV=.*not an executable file"):
        imx500.find_converter({imx500.ENV: str(tmp_path / "nowhere" / "imxconv-tf"), "PATH": ""})


def test_broken_converter_is_a_config_error(tmp_path):
    broken = tmp_path / "imxconv-tf"
    broken.write_text("#!/bin/sh\necho 'java: not found' >&2\nexit 127\n")
    broken.chmod(0o755)
    with pytest.raises(ConfigError, match=r"--version failed \(exit 127\): java: not found"):
        imx500.find_converter({imx500.ENV: str(broken)})


# ---------------------------------------------------------------------------------------
# The memory report (pure)


def test_sizes_in_bytes_and_in_the_converters_human_units():
    assert imx500.size_bytes("96256B") == 96256
    assert imx500.size_bytes("94.00KB") == 94 * 1024
    assert imx500.size_bytes("8.00MB") == 8 * 1024 * 1024
    with pytest.raises(ValueError):
        imx500.size_bytes("3%")


def test_memory_facts_add_up():
    report = {
        "Memory Report": {
            "Runtime Memory Physical Size": "1000B",
            "Model Memory Physical Size": "3000B",
            "Reserved Memory": "24B",
            "Memory Usage": "4024B",
            "Total Memory Available On Chip": "8048B",
            "Memory Utilization": "50%",
            "Fit In Chip": True,
        }
    }
    facts = imx500.memory_facts(report, "9.9.9")
    assert facts == {
        "converter_version": "9.9.9",
        "fit_in_chip": True,
        "memory_usage": "4024B",
        "memory_usage_bytes": 4024,
        "model_memory_bytes": 3000,
        "runtime_memory_bytes": 1000,
        "reserved_memory_bytes": 24,
        "total_memory_bytes": 8048,
        "utilization": 0.5,
    }


# ---------------------------------------------------------------------------------------
# Real conversions


def calibration_pixels(project: Path, count: int = 16):
    from mctq_job.config import Preprocessing
    from mctq_job.images import load_batch

    files = sorted(p for p in (project / "dataset" / "training").rglob("*") if p.is_file())[:count]
    return load_batch(files, IMAGE_SIDE, Preprocessing()).pixels


def quantize_for_imx500(model, pixels, tpc_version: str = "1.0", core_config=None):
    """MCT post-training quantization with the job's own imx500 TPC, two calibration batches."""
    import model_compression_toolkit as mct

    from mctq_job.quantize import target_platform_capabilities

    half = len(pixels) // 2
    quantized, _ = mct.ptq.keras_post_training_quantization(
        model,
        lambda: iter([[pixels[:half]], [pixels[half:]]]),
        target_platform_capabilities=target_platform_capabilities("imx500", tpc_version),
        core_config=core_config or mct.core.CoreConfig(),
    )
    return quantized


@pytest.fixture(scope="session")
def digits_float(digits_template):
    import tensorflow as tf

    model = tf.keras.models.load_model(str(digits_template / "model" / "saved_model"))
    return model, calibration_pixels(digits_template)


@pytest.fixture(scope="session")
def digits_keras(digits_float, tmp_path_factory):
    """The quantized digits model, its calibration pixels and its MCT Keras export."""
    from mctq_job.export import keras_export_model

    model, pixels = digits_float
    quantized = quantize_for_imx500(model, pixels)
    destination = tmp_path_factory.mktemp("imx500-export") / "model_quantized.keras"
    keras_export_model(quantized, destination)
    return quantized, pixels, destination


@pytest.fixture(scope="session")
def digits_package(converter, digits_keras, tmp_path_factory):
    lines: list[str] = []
    work_dir = tmp_path_factory.mktemp("imx500-work")
    package = imx500.convert(converter, digits_keras[2], work_dir, lines.append, Cleanups())
    return package, lines, work_dir


@pytest.mark.slow
def test_digits_package_is_complete(digits_package):
    package, lines, _ = digits_package
    with zipfile.ZipFile(package.packer_out) as archive:
        assert archive.namelist() and archive.testzip() is None
    assert ElementTree.parse(package.dnn_params).getroot() is not None
    assert package.memory_report.name == "model_quantized_MemoryReport.json"
    assert any("packer zip successfully generated" in line for line in lines)


@pytest.mark.slow
def test_digits_facts_are_those_of_the_memory_report(digits_package, converter):
    package, _, _ = digits_package
    report = json.loads(package.memory_report.read_text())["Memory Report"]
    facts = package.facts
    assert facts["converter_version"] == converter.version
    assert facts["fit_in_chip"] is report["Fit In Chip"] is True and package.fits
    assert facts["memory_usage"] == report["Memory Usage"]
    assert facts["model_memory_bytes"] == int(report["Model Memory Physical Size"].rstrip("B"))
    assert facts["memory_usage_bytes"] == (
        facts["model_memory_bytes"] + facts["runtime_memory_bytes"] + facts["reserved_memory_bytes"]
    )
    assert facts["total_memory_bytes"] == int(report["Total Memory Available On Chip"].rstrip("B"))
    assert 8_000_000 < facts["total_memory_bytes"] <= 8 * 1024 * 1024
    assert facts["utilization"] == pytest.approx(int(report["Memory Utilization"].rstrip("%")) / 100, abs=0.01)


@pytest.mark.slow
def test_converter_temp_files_stay_in_the_work_dir(digits_package):
    _, lines, work_dir = digits_package
    temp_dir = str((work_dir / imx500.TEMP_FOLDER).absolute())
    wrote = [line for line in lines if "Wrote outputs to" in line]
    assert wrote and all(f"Wrote outputs to {temp_dir}/" in line for line in wrote), wrote


LOAD_AND_PREDICT = """
import sys, numpy as np, mct_quantizers
model = mct_quantizers.keras_load_quantized_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


@pytest.mark.slow
def test_exported_keras_predicts_like_the_quantized_model_in_a_fresh_process(digits_keras, tmp_path):
    import numpy as np

    quantized, pixels, exported = digits_keras
    np.save(tmp_path / "x.npy", pixels)
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(exported), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    expected = quantized.predict(pixels, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("tpc_version", [v for v in TPC_VERSIONS["imx500"] if v != "1.0"])
def test_every_accepted_tpc_version_converts(converter, digits_float, tpc_version, tmp_path):
    from mctq_job.export import keras_export_model

    model, pixels = digits_float
    keras_export_model(quantize_for_imx500(model, pixels, tpc_version), tmp_path / "model_quantized.keras")
    package = imx500.convert(
        converter, tmp_path / "model_quantized.keras", tmp_path / "work", lambda line: None, Cleanups()
    )
    assert package.fits and package.packer_out is not None


@pytest.mark.slow
def test_model_too_large_for_the_chip_does_not_fit(converter, tmp_path):
    """About 8.9 million 8-bit weights, beyond the chip's 8 MB. Quantized without the
    threshold search (seconds instead of minutes); the converter itself needs ~2 min and ~6 GB."""
    import model_compression_toolkit as mct
    import numpy as np
    import tensorflow as tf

    from mctq_job.export import keras_export_model

    inputs = tf.keras.Input((IMAGE_SIDE, IMAGE_SIDE, 3))
    hidden = tf.keras.layers.Dense(2880, activation="relu")(tf.keras.layers.Flatten()(inputs))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(hidden))
    pixels = np.random.default_rng(0).normal(size=(8, IMAGE_SIDE, IMAGE_SIDE, 3)).astype("float32")
    fast = mct.core.CoreConfig(
        quantization_config=mct.core.QuantizationConfig(
            weights_error_method=mct.core.QuantizationErrorMethod.NOCLIPPING
        )
    )
    keras_export_model(quantize_for_imx500(model, pixels, core_config=fast), tmp_path / "model_quantized.keras")

    package = imx500.convert(
        converter, tmp_path / "model_quantized.keras", tmp_path / "work", lambda line: None, Cleanups()
    )
    assert package.facts["fit_in_chip"] is False
    assert package.facts["memory_usage_bytes"] > package.facts["total_memory_bytes"]
    assert package.facts["utilization"] > 1
    assert package.packer_out is None


def live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every live (non-zombie) process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(stat.parent.name), fields


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    return [pid for pid, fields in live_processes() if int(fields[2]) == pgid]


def own_sessions() -> list[int]:
    """Process groups led by a child of this process (the converter runs in a session of its own)."""
    return [pid for pid, fields in live_processes() if int(fields[1]) == os.getpid() and int(fields[2]) == pid]


@pytest.mark.slow
def test_the_registered_cleanup_kills_the_whole_conversion(converter, digits_keras, tmp_path, capfd):
    """Stopped once Java runs (the deepest part of the tree) by the clean-up the conversion
    registered: nothing of it survives, the call raises ConverterError, the clean-up is
    unregistered, and none of the converter's output reached the job's stdout."""
    cleanups = Cleanups()
    java_started = threading.Event()
    outcome: dict[str, BaseException] = {}

    def on_line(line: str) -> None:
        if "Starting SDSPconv" in line:
            java_started.set()

    def run() -> None:
        try:
            imx500.convert(converter, digits_keras[2], tmp_path, on_line, cleanups)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    assert java_started.wait(timeout=300), "the converter never reached its Java stage"
    (pgid,) = own_sessions()
    assert len(group_members(pgid)) >= 2 and len(cleanups) == 1

    started = time.monotonic()
    cleanups.run()
    assert time.monotonic() - started < imx500.KILL_GRACE_S + 5
    assert group_members(pgid) == []
    worker.join(timeout=30)
    assert isinstance(outcome.get("error"), imx500.ConverterError)
    assert outcome["error"].returncode != 0
    assert len(cleanups) == 0 and own_sessions() == []
    assert capfd.readouterr().out == ""
