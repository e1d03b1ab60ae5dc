"""The fast statistics path (mctq_job/fast_statistics.py) gives exactly what MCT's own statistics
collection gives: the same histograms, bins, means and min/max per collector, and - through
quantize() - the same quantized weights, activation thresholds and INT8 TFLite bytes; it stays
off for any MCT version but the pinned one; and it fails loudly the day MCT or numpy changes the
code it reproduces."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mctq_job import fast_statistics

#: sha256 of the source of every function fast_statistics reproduces, as in MCT 2.6.1 / numpy 1.26.4.
RECORDED_SOURCE_HASHES = {
    "model_compression_toolkit.core.common.collectors.statistics_collector.StatsCollector.__init__": "1c30f1263df5988d31f2bc548266b6baa7d6b6563c2e8325178d4da16cc5c502",
    "model_compression_toolkit.core.common.collectors.statistics_collector.StatsCollector.update_statistics": "7ba2ff73c74caf678933d34724f610f3bc38a26e766d8fb9c3589fa61ecc0add",
    "model_compression_toolkit.core.common.model_collector.ModelCollector.infer": "1e75459cf85f090d61aef08c423d56117d1a93160638ba509aa4cd7739025652",
    "model_compression_toolkit.core.keras.keras_implementation.KerasImplementation.to_numpy": "f4fd42a543d6d2f1dd6e1137d5004a8ad277cdae5bde8e9ef4e5751d1b3d11a4",
    "model_compression_toolkit.core.keras.tf_tensor_numpy.tf_tensor_to_numpy": "d7fc1433034550c8db72cbe85e58922e7321f9a03a7b7d1d2fbfa55c0a06bd74",
    "model_compression_toolkit.core.common.collectors.statistics_collector.standardize_tensor": "25623b5074ea4a82cd08d595471c1a97f71e1082ef96a15e962ef1cafa3b3286",
    "model_compression_toolkit.core.common.collectors.histogram_collector.HistogramCollector.__init__": "1e7f39ccb51de399f9304314568b61f07062e6fa0c6479f7777f30a685d6a1fe",
    "model_compression_toolkit.core.common.collectors.histogram_collector.HistogramCollector.update": "3b364e6cd0c6b2b21bd2b737a5eff08d9aa682bc81bf52af3235e3b3914ae3f4",
    "model_compression_toolkit.core.common.collectors.weighted_histogram_collector.WeightedHistogramCollector.update": "1182d807b07a67a00050c324a7caf7cd92add161daccdcb456d345a53cd7c6a9",
    "model_compression_toolkit.core.common.collectors.mean_collector.MeanCollector.__init__": "de5938a0dc850f47cfff7259febc71532e3acbb7e13ed373491a28eaaec45aab",
    "model_compression_toolkit.core.common.collectors.mean_collector.MeanCollector.update": "ab582a47a22473139e14c71a354492ae85c4d3b8e69a2e3be9deed8ac119049d",
    "model_compression_toolkit.core.common.collectors.min_max_per_channel_collector.MinMaxPerChannelCollector.__init__": "8c928f1660e0891a719d23b2c98fcd1a6618facf01442d8f998f5b7c5646990e",
    "model_compression_toolkit.core.common.collectors.min_max_per_channel_collector.MinMaxPerChannelCollector.update": "d94110d8299d86e6b79f256a59f994d449cbac94731fe0c0a4475992cee49e4e",
    "numpy.histogram": "522f98e8d1ac295b20671640acea29b51fb36206949857f709d82fa0454954af",
    "numpy.lib.histograms._get_outer_edges": "94321f0c53f0092ca7c44cc719d65468dc1be4319bf7449bbdec4791dab7419a",
    "numpy.lib.histograms._get_bin_edges": "df609402a2d238cdcbc660c23490a2e437d1ea7e5e6bf7922225d93fdb9b89cb",
    "numpy.lib.histograms._unsigned_subtract": "f93d58fc0c34cf9c457b49568d918aeda4445f6212c3958ab0463f6b9b2c0d37",
}


# --- unit identity: histogram, range, rows ------------------------------------------------------


def _numpy_histogram_via_fast_path(values: np.ndarray, n_bins: int = 2048):
    as_float64 = np.asarray(values).astype(np.float64)
    edges_range = fast_statistics.histogram_range(np.atleast_1d(as_float64.min()), np.atleast_1d(as_float64.max()))
    return fast_statistics.uniform_histogram(as_float64, *edges_range, n_bins)


def _assert_same_arrays(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def _adversarial_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    edges = np.linspace(-1.0, 3.0, 2049)
    f32 = np.finfo(np.float32)
    return {
        "normal float32": rng.standard_normal(300_000).astype(np.float32),
        "values on every edge and one ulp either side": np.clip(
            np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)]), -1.0, 3.0
        ),
        "constant": np.full(1000, 2.5, np.float32),
        "single value": np.array([-7.0], np.float32),
        "zero": np.zeros(10, np.float32),
        "float32 extremes": np.array([f32.min, f32.max, 0.0, f32.tiny, -f32.tiny], np.float32),
        "denormal range": np.array([0.0, 5e-324, 1e-320]),
        "two neighbouring floats": np.array([1.0, np.nextafter(np.float32(1), np.float32(2))], np.float32),
        "huge offset, tiny spread": (1e6 + rng.integers(0, 5, 5000) * np.spacing(np.float32(1e6))).astype(np.float32),
        "few distinct values": (rng.integers(0, 7, 100_000) / 7).astype(np.float32),
        "relu-like": np.maximum(rng.standard_normal(200_000), 0).astype(np.float32),
    }


@pytest.mark.parametrize("name", list(_adversarial_arrays()))
def test_histogram_equals_numpy_on_adversarial_arrays(name):
    values = _adversarial_arrays()[name]
    ours = _numpy_histogram_via_fast_path(values)
    theirs = np.histogram(values.astype(np.float64), bins=2048)
    _assert_same_arrays(ours, theirs)


@pytest.mark.parametrize("n_bins", [1, 2, 7, 2048])
def test_histogram_equals_numpy_for_any_bin_count_and_chunking(n_bins, monkeypatch):
    monkeypatch.setattr(fast_statistics, "HISTOGRAM_CHUNK", 1000)  # many chunks and a partial last one
    values = np.random.default_rng(3).standard_normal(12_345)
    _assert_same_arrays(_numpy_histogram_via_fast_path(values, n_bins), np.histogram(values, bins=n_bins))


def test_range_is_not_given_for_non_finite_values():
    assert fast_statistics.histogram_range(np.array([np.nan, 0.0]), np.array([1.0, 2.0])) is None
    assert fast_statistics.histogram_range(np.array([0.0]), np.array([np.inf])) is None


def test_negative_zero_is_detected_in_both_widths():
    assert fast_statistics.has_negative_zero(np.array([1.0, -0.0], np.float32))
    assert fast_statistics.has_negative_zero(np.array([[-0.0]]))
    assert not fast_statistics.has_negative_zero(np.array([0.0, -1.0, -np.inf], np.float32))


# --- collector identity ---------------------------------------------------------------------------


def _collector_state(collector) -> list[np.ndarray]:
    """Everything a StatsCollector holds after updates, as arrays: per-batch and merged histograms
    of both histogram collectors, the mean, the min/max state and the final min/max."""
    per_batch = [
        a for h in collector.hc._histogram_per_iteration + collector.weighted_hc._histogram_per_iteration for a in h
    ]
    merged = [*collector.hc.get_histogram(), *collector.weighted_hc.get_histogram()]
    return [
        *per_batch,
        *merged,
        np.asarray(collector.mc.state),
        collector.mpcc.state,
        np.array(collector.get_min_max_values()),
    ]


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "conv output": rng.standard_normal((4, 7, 7, 5)).astype(np.float32),
        "relu output": np.maximum(rng.standard_normal((8, 9, 9, 16)), 0).astype(np.float32),
        "dense output (reshape is a view)": rng.standard_normal((8, 10)).astype(np.float32),
        "1x1 spatial": rng.standard_normal((8, 1, 1, 12)).astype(np.float32),
        "constant": np.full((3, 4), 2.5, np.float32),
        "float64": rng.standard_normal((8, 5)),
        "signed zeros at the minimum": np.array([[0.0, -0.0, 1.0], [2.0, 0.0, -0.0]], np.float32),
        "signed zeros at the maximum": np.array([[-0.0, 0.0, -1.0]], np.float32),
        "channel axis not contiguous": rng.standard_normal((6, 5, 4)).astype(np.float32).transpose(0, 2, 1),
        "NaN": np.array([[1.0, np.nan]], np.float32),
        "signed zeros inside the range": np.array([[-1.0, -0.0, 0.0, 1.0], [0.0, -0.0, 2.0, -2.0]], np.float32),
        "infinity": np.array([[1.0, np.inf], [0.0, 2.0]], np.float32),
        "both infinities in one channel": np.array([[-np.inf, 1.0], [np.inf, 2.0]], np.float32),
        "NaN beside a finite channel": np.array([[np.nan, 1.0], [3.0, 2.0]], np.float32),
    }


def _update_all(collector, batches) -> Exception | None:
    try:
        for batch in batches:
            collector.update_statistics(batch)
    except Exception as error:  # noqa: BLE001 - the same error must come from both paths
        return error
    return None


@pytest.mark.slow  # imports MCT
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("name", list(_tensors()))
def test_collector_state_equals_mcts(name, axis):
    from model_compression_toolkit.core.common.collectors.statistics_collector import StatsCollector

    x = _tensors()[name]
    batches = [x, x * 1.5 + 0.25, np.ascontiguousarray(x[::-1])]
    reference, fast = StatsCollector(axis), StatsCollector(axis)
    reference_error = _update_all(reference, batches)
    with fast_statistics.faster_statistics() as status:
        assert status.active, status.reason
        fast_error = _update_all(fast, batches)
    assert type(fast_error) is type(reference_error) and str(fast_error) == str(reference_error)
    if reference_error is None:
        _assert_same_arrays(_collector_state(fast), _collector_state(reference))


@pytest.mark.slow  # imports MCT
def test_mcts_methods_are_back_after_the_block():
    from model_compression_toolkit.core.common.collectors.statistics_collector import StatsCollector
    from model_compression_toolkit.core.common.model_collector import ModelCollector
    from model_compression_toolkit.core.keras.keras_implementation import KerasImplementation

    before = (StatsCollector.update_statistics, ModelCollector.infer, KerasImplementation.to_numpy)
    with fast_statistics.faster_statistics():
        inside = (StatsCollector.update_statistics, ModelCollector.infer, KerasImplementation.to_numpy)
        assert all(ours is not theirs for ours, theirs in zip(inside, before, strict=True))
        with fast_statistics.faster_statistics() as nested:
            assert not nested.active
    assert (StatsCollector.update_statistics, ModelCollector.infer, KerasImplementation.to_numpy) == before


@pytest.mark.slow  # imports MCT
def test_layer_outputs_are_read_in_place_only_inside_infer():
    """Inside ModelCollector.infer a layer's output reaches the statistics as a view of the
    tensor's own buffer, equal to MCT's copy; outside it (and for a scalar) MCT's conversion runs."""
    import tensorflow as tf
    from model_compression_toolkit.core.keras.keras_implementation import KerasImplementation

    tensor = tf.random.stateless_normal((2, 5, 5, 3), seed=(1, 2))
    scalar = tf.constant(2.5)
    implementation = KerasImplementation()
    expected, expected_scalar = implementation.to_numpy(tensor), implementation.to_numpy(scalar)
    seen: dict[str, np.ndarray] = {}

    def fake_infer(self, inputs_list):  # MCT's infer converts each output with fw_impl.to_numpy
        seen["inside"] = implementation.to_numpy(tensor)
        seen["scalar"] = implementation.to_numpy(scalar)

    with fast_statistics.faster_statistics():
        swap = fast_statistics._installed()
        original_infer, swap.infer = swap.infer, fake_infer
        try:
            fast_statistics.infer_then_wait(None, [])
        finally:
            swap.infer = original_infer
        seen["outside"] = implementation.to_numpy(tensor)
    inside, outside = seen["inside"], seen["outside"]
    assert not inside.flags.owndata and outside.flags.owndata and expected.flags.owndata
    for converted in (inside, outside):
        assert converted.dtype == expected.dtype and converted.shape == expected.shape
        assert converted.tobytes() == expected.tobytes()
    assert seen["scalar"].shape == expected_scalar.shape == (1,) and seen["scalar"][0] == expected_scalar[0]


# --- guard against MCT / numpy changes -----------------------------------------------------------


@pytest.mark.slow  # imports MCT
def test_reproduced_code_is_unchanged_since_it_was_checked():
    changed = {
        name for name, digest in fast_statistics.source_hashes().items() if RECORDED_SOURCE_HASHES.get(name) != digest
    }
    assert not changed, (
        f"MCT's or numpy's code that mctq_job/fast_statistics.py reproduces has changed: {sorted(changed)}. "
        "Re-check that each replacement still computes exactly what the new code computes (and re-run the "
        "identity tests of this file), then record the new hashes in RECORDED_SOURCE_HASHES."
    )


@pytest.mark.slow  # imports MCT
def test_other_mct_versions_run_mcts_own_code(monkeypatch):
    import model_compression_toolkit as mct
    from model_compression_toolkit.core.common.collectors.statistics_collector import StatsCollector

    monkeypatch.setattr(fast_statistics, "PINNED_MCT_VERSION", "0.0.0-other")
    original = StatsCollector.update_statistics
    with fast_statistics.faster_statistics() as status:
        assert StatsCollector.update_statistics is original
    assert not status.active
    assert mct.__version__ in status.reason and "0.0.0-other" in status.reason


# --- whole quantization: quantize() with and without the fast path -------------------------------


def _canonical(value):
    """A comparable form of a quantizer config: arrays by dtype, shape and bytes, floats exactly."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray) or type(value).__module__.startswith(("numpy", "tensorflow")):
        array = np.asarray(value)
        return (str(array.dtype), array.shape, hashlib.sha256(array.tobytes()).hexdigest())
    if isinstance(value, float):
        return value.hex()
    return repr(value) if not isinstance(value, (str, int, bool, type(None))) else value


def _quantized_values(model) -> list:
    """Per layer, in order (names differ between runs): every weight array's bytes, the weights
    quantizers' and the activation holder quantizer's configs (thresholds, bits, signedness)."""
    layers = []
    for layer in model.layers:
        weights = [(str(w.dtype), w.shape, w.tobytes()) for w in map(np.asarray, layer.get_weights())]
        quantizers = {attr: _canonical(q.get_config()) for attr, q in getattr(layer, "weights_quantizers", {}).items()}
        holder = getattr(layer, "activation_holder_quantizer", None)
        activation = _canonical(holder.get_config()) if holder is not None else None
        layers.append((type(layer).__name__, weights, quantizers, activation))
    return layers


def _int8_tflite_sha256(model, folder) -> str:
    import model_compression_toolkit as mct
    from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat

    path = folder / "model.tflite"
    mct.exporter.keras_export_model(
        model=model,
        save_model_path=str(path),
        serialization_format=KerasExportSerializationFormat.TFLITE,
        quantization_format=QuantizationFormat.INT8,
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(**options):
    from mctq_job.config import Config

    return Config.model_construct(**options)  # quantize() reads only the quantization options


def _quantize_once(model, batches, config, folder):
    import tensorflow as tf

    from mctq_job import quantize

    tf.keras.backend.clear_session()  # same layer names, as in a fresh job
    tf.keras.utils.set_random_seed(0)  # as the job seeds TensorFlow
    tf.config.experimental.enable_op_determinism()

    def representative_data_gen():
        for batch in batches:
            yield [batch]

    result = quantize.quantize(model, representative_data_gen, config)
    folder.mkdir()
    return result, _quantized_values(result.model), _int8_tflite_sha256(result.model, folder)


def _assert_fast_path_is_identical(model, batches, config, tmp_path, monkeypatch):
    with monkeypatch.context() as unpinned:
        unpinned.setattr(fast_statistics, "PINNED_MCT_VERSION", "0.0.0-other")
        reference, reference_values, reference_sha = _quantize_once(model, batches, config, tmp_path / "mct")
    fast, fast_values, fast_sha = _quantize_once(model, batches, config, tmp_path / "fast")
    assert reference.statistics["path"] == "mct" and fast.statistics["path"] == "fast", fast.statistics
    assert len(fast_values) == len(reference_values)
    for index, (ours, theirs) in enumerate(zip(fast_values, reference_values, strict=False)):
        assert ours == theirs, f"layer {index} ({theirs[0]}) differs"
    assert fast_sha == reference_sha
    assert fast.resource_utilization == reference.resource_utilization


OPTIONS = {
    "ptq": {},
    "mixed precision": {"mixed_precision": {"weights_memory_ratio": 0.75, "images": 8, "hessian": False}},
    "gptq": {"quantization_method": "gptq", "gptq": {"epochs": 1, "hessian": False}},
}


def _options(name: str) -> dict:
    from mctq_job.config import Gptq, MixedPrecision

    options = dict(OPTIONS[name])
    if "mixed_precision" in options:
        options["mixed_precision"] = MixedPrecision(**options["mixed_precision"])
    if "gptq" in options:
        options["gptq"] = Gptq(**options["gptq"])
    return options


@pytest.fixture(scope="module")
def small_mobilenet():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1)
    model = tf.keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=10)
    pixels = np.random.default_rng(5).uniform(-1, 1, (3, 8, 96, 96, 3)).astype(np.float32)
    return model, list(pixels)


@pytest.fixture(scope="module")
def digits_model(digits_template):
    import tensorflow as tf

    model = tf.keras.models.load_model(digits_template / "model" / "saved_model")
    side = model.input_shape[1]
    paths = sorted(p for p in (digits_template / "dataset" / "training").rglob("*") if p.is_file())[:48]
    pixels = np.stack([_digit_pixels(p, side) for p in paths])
    return model, [pixels[i : i + 16] for i in range(0, 48, 16)]


def _digit_pixels(path, side):
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB").resize((side, side)), np.float32)
    return (array - 127.5) / 127.5


@pytest.mark.slow
@pytest.mark.parametrize("option", list(OPTIONS))
def test_quantize_is_identical_on_digits(option, digits_model, tmp_path, monkeypatch):
    model, batches = digits_model
    _assert_fast_path_is_identical(model, batches, _config(**_options(option)), tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("option", list(OPTIONS))
def test_quantize_is_identical_on_mobilenet_v2(option, small_mobilenet, tmp_path, monkeypatch):
    model, batches = small_mobilenet
    _assert_fast_path_is_identical(model, batches, _config(**_options(option)), tmp_path, monkeypatch)


@pytest.mark.slow
def test_quantize_reports_mcts_own_path_for_another_version(small_mobilenet, tmp_path, monkeypatch):
    model, batches = small_mobilenet
    monkeypatch.setattr(fast_statistics, "PINNED_MCT_VERSION", "0.0.0-other")
    result, _, _ = _quantize_once(model, batches[:1], _config(), tmp_path / "out")
    assert result.statistics["path"] == "mct"
    assert "0.0.0-other" in result.statistics["reason"]
