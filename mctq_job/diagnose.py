"""Stage ``diagnose``: where the quantized model departs from the float one, named by the user's
layers, and what looks wrong there.

Three pure pieces and the stage (:func:`run`):

- :func:`map_points`: every activation holder of MCT's quantized Keras model (the tensors MCT
  quantizes) paired with the tensor of the user's float model that it stands for, in graph
  order; what cannot be paired is listed with the reason.
- :func:`measure`: one streamed pass of one probe model over the images, which computes the
  float tensors, MCT's quantized tensors and each holder's *local* tensor (the layers since the
  previous holders run on float inputs, then quantized) and reduces them inside the graph to a
  few sums per point: cumulative and local SQNR, clipped share, ranges, per-channel maxima, and
  per-input slices of concatenations.
- :class:`TFLiteTap`: the same tensors read from ``model_quantized.tflite`` by the TFLite
  interpreter (every tensor kept), so that a bad export shows as a departure from MCT's curve;
- :func:`findings`: unbalanced concatenations, activation outliers and outlier channels from
  those numbers; tensors that clip far more of the evaluation images than of the calibration
  images (:func:`clipping_findings`); classes of the label file the calibration batches never
  drew (:func:`calibration_classes`); weight tensors quantized per tensor whose range one
  channel dominates (:func:`weight_findings`).

How MCT 2.6.1 changes the graph (measured on the digits demo and MobileNetV2):

- a layer with weights becomes a ``KerasQuantizationWrapper`` whose inner layer keeps the
  user's name; a BatchNormalization folded into the convolution before it makes that name
  ``<conv>_bn`` and the BatchNormalization disappears (its output is the wrapper's output);
- an activation that the target does not fuse (softmax, or any activation of a layer that
  MCT splits off) becomes a separate layer ``<layer>_post_activation``; the holder right after
  the wrapper then quantizes the layer's pre-activation output, which the float model has no
  tensor for: a linear copy of the float layer provides it;
- a SeparableConv2D becomes ``<name>_dw`` and ``<name>_pw`` (the latter's output is the layer's);
  a BatchNormalization folded *forward* into the convolution after it makes ``<bn>_<conv>``;
- a convolution followed by a fusable ReLU has no holder of its own (the ReLU's holder follows
  the ReLU layer, which keeps its name);
- holders are named ``keras_activation_quantization_holder[_N]``: only the layer they follow
  says which tensor they quantize.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from .calibrate import Drawn
    from .context import RunContext
    from .export import Exported
    from .inputs import Inputs
    from .model import Loaded
    from .quantize import Quantized

HOLDER = "KerasActivationQuantizationHolder"
WRAPPER = "KerasQuantizationWrapper"
POST_ACTIVATION = "_post_activation"  # MCT's name of an activation split off its layer
FOLDED_BN = "_bn"  # MCT's suffix of a convolution that absorbed the BatchNormalization after it
PRE_ACTIVATION_COPY = "_pre_activation_copy"  # this module's float copies with a linear activation

#: A concatenation whose inputs' largest magnitudes differ by more than this is unbalanced.
UNBALANCED_RATIO = 16.0
#: A tensor whose largest magnitude exceeds its 99.9th percentile by more than this has outliers
#: (measured only where a batch has enough values for the percentile to differ from the maximum).
OUTLIER_RATIO = 8.0
PERCENTILE_VALUES = 10_000
#: A channel whose largest magnitude exceeds the median of the live channels' by more than this
#: stretches the per-tensor range alone (feature maps of at least CHANNELS channels): the median
#: channel keeps fewer than 256/32 = 8 of an unsigned 8-bit scale's levels. (At 16, an untrained
#: MobileNetV2 224's depthwise activations, 16.4 to 20.8, would be reported.)
CHANNEL_RATIO = 32.0
CHANNELS = 8
#: A tensor clips the evaluation images' activations (by more than one quantization step) for
#: at least this share of its values, and at least CLIP_OVER_CALIBRATION times the share it
#: clips on the calibration images: the calibration images do not represent the evaluation ones.
#: Clipping within one step is rounding (a softmax at 1.0 against a range ending at 0.996), and
#: clipping the calibration images already had is MCT's own choice of threshold (MSE, z_threshold).
CLIP_SHARE = 0.01
CLIP_OVER_CALIBRATION = 4.0
#: A weight tensor quantized per tensor whose largest output channel's range exceeds the median
#: channel's by more than this leaves the median channel fewer than 128/16 = 8 levels.
WEIGHT_CHANNEL_RATIO = 16.0
#: TFLite operators whose output shares its input's buffer without changing the values: a tensor
#: overwritten in place by any other operator (SOFTMAX, activations) cannot be read after invoke.
VIEW_OPERATORS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


@dataclass(frozen=True)
class Point:
    """One quantized tensor of MCT's model and its float counterpart."""

    name: str  # the user's layer whose output this is (e.g. a BatchNormalization folded away)
    holder: str  # MCT's activation holder quantizing it
    kind: str  # "input", "output", "folded" (conv + BatchNormalization), "pre-activation"
    float_tensor: Any  # KerasTensor of the float model's graph
    quantized_tensor: Any  # KerasTensor of the quantized model's graph (the holder's output)
    #: For a concatenation: (the user's input layer, first channel, end channel) of each input.
    slices: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class Mapping:
    points: list[Point]
    unmapped: list[tuple[str, str]]  # (holder, reason)
    float_model: Any = None  # the float model the points' tensors belong to (nested models inlined)


def _is(layer: Any, kind: str) -> bool:
    return type(layer).__name__ == kind


def _producers(layer: Any) -> list[Any]:
    """The layers whose outputs ``layer`` takes (its first call)."""
    node = layer.inbound_nodes[0]
    inbound = node.inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _consumers(layer: Any) -> list[Any]:
    """The layers taking ``layer``'s output, leaving out the linear copies this module makes."""
    return [
        node.outbound_layer
        for node in layer.outbound_nodes
        if not node.outbound_layer.name.endswith(PRE_ACTIVATION_COPY)
    ]


def _linear_copy(layer: Any) -> Any:
    """The float layer's output before its activation: a copy with a linear activation."""
    config = {**layer.get_config(), "activation": "linear", "name": layer.name + PRE_ACTIVATION_COPY}
    copy = type(layer).from_config(config)
    tensor = copy(layer.input)
    copy.set_weights(layer.get_weights())
    return tensor


def _float_counterpart(float_model: Any, quantized_names: set[str], producer: Any) -> tuple[str, str, Any]:
    """(name, kind, float tensor) of the output of ``producer`` (a layer of the quantized model);
    raises LookupError with the reason where there is none."""
    by_name = {layer.name: layer for layer in float_model.layers}
    if _is(producer, "InputLayer"):
        if producer.name not in by_name:
            raise LookupError(f"input '{producer.name}' is not an input of the float model")
        return producer.name, "input", by_name[producer.name].output
    if _is(producer, WRAPPER):
        inner = producer.layer.name
        layer = by_name.get(_separable(inner, by_name) or inner)
        if layer is not None:
            if inner + POST_ACTIVATION in quantized_names:  # MCT split the activation off
                return layer.name, "pre-activation", _linear_copy(layer)
            return layer.name, "output", layer.output
        base = inner[: -len(FOLDED_BN)] if inner.endswith(FOLDED_BN) else None
        if base in by_name:
            after = _consumers(by_name[base])
            if len(after) == 1 and isinstance(after[0], tf.keras.layers.BatchNormalization):
                return after[0].name, "folded", after[0].output
        for bn in by_name.values():  # a BatchNormalization folded forward into the layer after it
            if isinstance(bn, tf.keras.layers.BatchNormalization):
                after = _consumers(bn)
                if len(after) == 1 and f"{bn.name}_{after[0].name}" == inner:
                    return after[0].name, "folded", after[0].output
        raise LookupError(f"MCT's layer '{inner}' has no float layer of that name (nor a folded BatchNormalization)")
    name = producer.name
    base = name[: -len(POST_ACTIVATION)] if name.endswith(POST_ACTIVATION) else None
    if base is not None and (_separable(base, by_name) or base) in by_name:
        layer = by_name[_separable(base, by_name) or base]
        return layer.name, "output", layer.output
    if name in by_name:
        return name, "output", by_name[name].output
    raise LookupError(f"MCT's layer '{name}' ({type(producer).__name__}) has no float layer of that name")


def _separable(name: str, by_name: dict[str, Any]) -> str | None:
    """The SeparableConv2D that MCT split into ``<name>_dw`` and ``<name>_pw``, from the pointwise
    half's name (its output is the separable layer's); the depthwise half has no float tensor."""
    base = name[: -len("_pw")]
    return base if name.endswith("_pw") and isinstance(by_name.get(base), tf.keras.layers.SeparableConv2D) else None


def _slices(float_model: Any, name: str, producer: Any) -> tuple[tuple[str, int, int], ...]:
    """Channel ranges of a concatenation's inputs (last axis only), named by the float inputs."""
    if not isinstance(producer, tf.keras.layers.Concatenate) or producer.axis not in (
        -1,
        len(producer.output.shape) - 1,
    ):
        return ()
    concat = float_model.get_layer(name)
    result, start = [], 0
    for layer, tensor in zip(_producers(concat), concat.input, strict=True):
        end = start + int(tensor.shape[-1])
        result.append((layer.name, start, end))
        start = end
    return tuple(result)


def flattened(model: Any) -> Any:
    """``model`` with its nested models inlined, as MCT reads it (MCT 2.6.1 flattens a model used
    as a layer, e.g. a Keras application inside a Sequential, keeping the inner layers' names).
    The inner layers are copies with the same weights: the user's model gains no new nodes."""
    if not any(isinstance(layer, tf.keras.Model) for layer in model.layers):
        return model
    inputs = [
        tf.keras.Input(t.shape[1:], dtype=t.dtype, name=layer.name)
        for layer, t in zip(model._input_layers, model.inputs, strict=True)
    ]
    return tf.keras.Model(inputs, _inlined(model, inputs), name=f"{model.name}_flat")


def _inlined(model: Any, inputs: list[Any]) -> list[Any]:
    memo = {id(t): new for t, new in zip(model.inputs, inputs, strict=True)}

    def rebuilt(tensor: Any) -> Any:
        if id(tensor) in memo:
            return memo[id(tensor)]
        layer, node_index, tensor_index = tensor._keras_history
        node = layer.inbound_nodes[node_index]
        args, kwargs = tf.nest.map_structure(
            lambda t: rebuilt(t) if hasattr(t, "_keras_history") else t, (node.call_args, node.call_kwargs)
        )
        if isinstance(layer, tf.keras.Model):
            result = _inlined(layer, tf.nest.flatten(args))
        else:
            copy = type(layer).from_config(layer.get_config())
            result = copy(*args, **kwargs)
            copy.set_weights(layer.get_weights())
        memo[id(tensor)] = tf.nest.flatten(result)[tensor_index]
        return memo[id(tensor)]

    return [rebuilt(t) for t in model.outputs]


def map_points(float_model: Any, quantized_model: Any) -> Mapping:
    """Each activation holder of ``quantized_model`` with the float tensor it quantizes, in graph order."""
    float_model = flattened(float_model)
    quantized_names = {layer.name for layer in quantized_model.layers}
    points, unmapped = [], []
    for holder in quantized_model.layers:
        if not _is(holder, HOLDER):
            continue
        producer = _producers(holder)[0]
        try:
            name, kind, tensor = _float_counterpart(float_model, quantized_names, producer)
        except LookupError as exc:
            unmapped.append((holder.name, str(exc)))
            continue
        if tuple(tensor.shape[1:]) != tuple(holder.output.shape[1:]):
            unmapped.append((holder.name, f"'{name}' has shape {tensor.shape}, MCT's tensor {holder.output.shape}"))
            continue
        slices = _slices(float_model, name, producer) if kind == "output" else ()
        points.append(Point(name, holder.name, kind, tensor, holder.output, slices))
    return Mapping(points, unmapped, float_model)


def _local_tensors(mapping: Mapping, quantized_model: Any, x: Any, floats: list[Any]) -> list[Any]:
    """For each point, the quantized model's layers since the previous holders, run on the float
    values of those holders' points, then the point's own holder: the error this point injects
    alone (its weights and its activation quantization). Runs on real tensors (inside the probe's
    tf.function): the float and quantized models share layer names, so one Keras graph cannot
    hold both. An unmapped holder upstream is passed through unquantized (a float stand-in)."""
    float_of = {point.holder: value for point, value in zip(mapping.points, floats, strict=True)}
    inputs = dict(zip((layer.name for layer in quantized_model._input_layers), _as_list(x), strict=True))
    memo: dict[int, Any] = {}

    def rebuilt(tensor: Any) -> Any:
        layer, node_index, tensor_index = tensor._keras_history
        key = id(tensor)
        if key in memo:
            return memo[key]
        if _is(layer, "InputLayer"):
            result = inputs[layer.name]
        elif _is(layer, HOLDER) and layer.name in float_of:
            result = float_of[layer.name]
        else:
            node = layer.inbound_nodes[node_index]
            args, kwargs = tf.nest.map_structure(
                lambda t: rebuilt(t) if hasattr(t, "_keras_history") else t, (node.call_args, node.call_kwargs)
            )
            if _is(layer, HOLDER):  # unmapped: no float counterpart, keep it float
                result = args[0]
            else:
                result = tf.nest.flatten(layer(*args, **kwargs))[tensor_index]
        memo[key] = result
        return result

    return [
        quantized_model.get_layer(p.holder)(rebuilt(quantized_model.get_layer(p.holder).input)) for p in mapping.points
    ]


@dataclass
class Sums:
    """Per point, sums over all images (float64): the numbers the SQNRs and findings come from."""

    signal: np.ndarray  # sum of float^2
    noise: np.ndarray  # sum of (quantized - float)^2, cumulative
    local_noise: np.ndarray  # sum of (local - float)^2: the point's own weights and activation
    activation_noise: np.ndarray  # sum of (holder(float) - float)^2: the activation quantizer alone
    clipped: np.ndarray  # float values outside the holder's calibrated range
    values: np.ndarray  # number of values
    max_abs: np.ndarray  # largest |float|
    p999: np.ndarray  # largest per-batch 99.9th percentile of |float| (None when not measured)
    channel_max: list[np.ndarray]  # per last-axis channel, largest |float|
    slice_signal: list[np.ndarray]  # per concatenation input
    slice_noise: list[np.ndarray]
    slice_max_abs: list[np.ndarray]
    seconds: float = 0.0
    images: int = 0
    #: model_quantized.tflite against float: sum of (tflite - float)^2, NaN where not exposed
    tflite_noise: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: the same clipping count on the calibration images (and their number of values)
    calibration_clipped: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calibration_values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def sqnr(self, noise: np.ndarray | None = None) -> list[float | None]:
        return [sqnr_db(s, n) for s, n in zip(self.signal, self.noise if noise is None else noise, strict=True)]


def sqnr_db(signal: float, noise: float) -> float | None:
    """10 log10(signal / noise); None where the tensors are identical (no noise at all)."""
    if noise <= 0:
        return None
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _range_of(holder: Any) -> tuple[float, float]:
    quantizer = holder.activation_holder_quantizer
    if hasattr(quantizer, "min_range"):
        return float(np.min(quantizer.min_range)), float(np.max(quantizer.max_range))
    return -math.inf, math.inf


def _step_of(holder: Any) -> float:
    """The holder's quantization step (0 where it has no uniform grid)."""
    low, high = _range_of(holder)
    bits = getattr(holder.activation_holder_quantizer, "num_bits", None)
    if not bits or not math.isfinite(high - low):
        return 0.0
    return (high - low) / (2**bits - 1)


@dataclass
class Probe:
    """What the diagnosis runs: the float tensors, the quantized ones, and the local and
    activation-only ones computed from the float ones, reduced to sums per batch."""

    mapping: Mapping
    float_tap: Any  # the float model with every point as an output
    quantized_tap: Any  # MCT's model with every point's holder as an output
    quantized_model: Any
    ranges: list[tuple[float, float]]
    percentile: bool
    local: bool = True  # also the local and activation-only tensors (about doubles the pass)
    step: Any = field(repr=False, default=None)  # the probe's tf.function (see _step)
    steps: list[float] = field(default_factory=list)  # each holder's quantization step


def _clipped(p: Probe, i: int, f: Any) -> Any:
    """Values of ``f`` more than one quantization step outside point ``i``'s calibrated range."""
    minimum, maximum = p.ranges[i]
    step = p.steps[i]
    return tf.reduce_sum(tf.cast((f < minimum - step) | (f > maximum + step), tf.float32))


def probe(
    float_model: Any,
    quantized_model: Any,
    mapping: Mapping | None = None,
    percentile: bool = True,
    local: bool = True,
) -> Probe:
    mapping = mapping or map_points(float_model, quantized_model)
    points = mapping.points
    float_model = mapping.float_model if mapping.float_model is not None else float_model
    float_tap = tf.keras.Model(float_model.inputs, [p.float_tensor for p in points])
    quantized_tap = tf.keras.Model(quantized_model.inputs, [p.quantized_tensor for p in points])
    ranges = [_range_of(quantized_model.get_layer(p.holder)) for p in points]
    result = Probe(mapping, float_tap, quantized_tap, quantized_model, ranges, percentile, local)
    result.steps = [_step_of(quantized_model.get_layer(p.holder)) for p in points]
    result.step = _step(result)
    return result


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _step(p: Probe, tflite: dict[int, tuple[float, int]] | None = None) -> Any:
    """The probe's pass over one batch. ``tflite``: point index -> (scale, zero point) of the
    TFLite tensors handed in with the batch, in that order."""
    slices = [point.slices for point in p.mapping.points]
    tflite = tflite or {}

    @tf.function(reduce_retracing=True)
    def step(x: Any, tflite_values: Any = ()) -> Any:
        read = dict(zip(tflite, tflite_values, strict=True))
        floats = _as_list(p.float_tap(x, training=False))
        quantized = _as_list(p.quantized_tap(x, training=False))
        holders = [p.quantized_model.get_layer(point.holder) for point in p.mapping.points]
        local = _local_tensors(p.mapping, p.quantized_model, x, floats) if p.local else quantized
        activation = [holder(f) for holder, f in zip(holders, floats, strict=True)] if p.local else quantized
        out = []
        # Sums of one batch in float32 (TensorFlow's CPU reductions add pairwise: relative error
        # well below 1e-4 here); measure() adds the batches in float64.
        for i, (f, q, lo, a) in enumerate(zip(floats, quantized, local, activation, strict=True)):
            absolute = tf.abs(f)
            row = {
                "signal": tf.reduce_sum(tf.square(f)),
                "noise": tf.reduce_sum(tf.square(q - f)),
                "local_noise": tf.reduce_sum(tf.square(lo - f)),
                "activation_noise": tf.reduce_sum(tf.square(a - f)),
                "clipped": _clipped(p, i, f),
                "values": tf.cast(tf.size(f), tf.float32),
                "max_abs": tf.reduce_max(absolute),
                "channel_max": tf.reduce_max(tf.reshape(absolute, [-1, tf.shape(f)[-1]]), axis=0),
            }
            if i in read:  # model_quantized.tflite's tensor, dequantized
                scale, zero = tflite[i]
                t = tf.reshape((tf.cast(read[i], tf.float32) - zero) * scale, tf.shape(f))
                row["tflite_noise"] = tf.reduce_sum(tf.square(t - f))
            if p.percentile:  # the smallest of the top 0.1 % of |values| in this batch
                flat = tf.reshape(absolute, [-1])
                row["p999"] = tf.reduce_min(tf.math.top_k(flat, tf.maximum(1, tf.size(flat) // 1000)).values)
            row["slices"] = [
                tf.stack(
                    [
                        tf.reduce_sum(tf.square(f[..., start:end])),
                        tf.reduce_sum(tf.square(q[..., start:end] - f[..., start:end])),
                        tf.reduce_max(absolute[..., start:end]),
                    ]
                )
                for _, start, end in slices[i]
            ]
            out.append(row)
        return out

    return step


def measure(
    p: Probe,
    batches: Iterable[np.ndarray],
    tflite: TFLiteTap | None = None,
    calibration: Iterable[np.ndarray] = (),
) -> Sums:
    """Stream ``batches`` (arrays of model inputs) through the probe, one call per batch; with
    ``tflite``, the TFLite file's tensors of the same batch are compared with the float ones in
    the same call; ``calibration`` batches are run through the float model alone, to count what
    the calibrated ranges clip there."""
    import time

    n = len(p.mapping.points)
    zeros = np.zeros(n)
    sums = Sums(
        zeros.copy(),
        zeros.copy(),
        zeros.copy(),
        zeros.copy(),
        zeros.copy(),
        zeros.copy(),
        zeros.copy(),
        np.full(n, np.nan) if not p.percentile else zeros.copy(),
        [np.zeros(0)] * n,
        [np.zeros(len(pt.slices)) for pt in p.mapping.points],
        [np.zeros(len(pt.slices)) for pt in p.mapping.points],
        [np.zeros(len(pt.slices)) for pt in p.mapping.points],
    )
    sums.tflite_noise = np.full(n, np.nan)
    exposed = tflite.exposed if tflite is not None else {}
    for i in exposed:
        sums.tflite_noise[i] = 0.0
    step = _step(p, exposed) if exposed else p.step
    start = time.perf_counter()
    traced = None
    for batch in batches:
        read = tuple(tflite.read(batch)) if tflite is not None and exposed else ()
        traced = traced or step.get_concrete_function(_any_batch(batch), tuple(_any_batch(v) for v in read))
        rows = traced(tf.constant(batch), read)
        sums.images += int(batch.shape[0])
        for i, row in enumerate(rows):
            if "tflite_noise" in row:
                sums.tflite_noise[i] += float(row["tflite_noise"])
            for key in ("signal", "noise", "local_noise", "activation_noise", "clipped", "values"):
                getattr(sums, key)[i] += float(row[key])
            sums.max_abs[i] = max(sums.max_abs[i], float(row["max_abs"]))
            if p.percentile:
                sums.p999[i] = max(sums.p999[i], float(row["p999"]))
            channel = row["channel_max"].numpy().astype(np.float64)
            sums.channel_max[i] = channel if sums.channel_max[i].size == 0 else np.maximum(sums.channel_max[i], channel)
            for j, values in enumerate(row["slices"]):
                s, q, m = values.numpy()
                sums.slice_signal[i][j] += s
                sums.slice_noise[i][j] += q
                sums.slice_max_abs[i][j] = max(sums.slice_max_abs[i][j], m)
    sums.calibration_clipped, sums.calibration_values = _calibration_clipping(p, calibration)
    sums.seconds = time.perf_counter() - start
    return sums


def _any_batch(value: np.ndarray) -> tf.TensorSpec:
    """``value``'s spec with any batch size: a probe's graph is traced once (several seconds at
    real size), not again for the last, smaller batch."""
    return tf.TensorSpec([None, *value.shape[1:]], tf.as_dtype(value.dtype))


def _calibration_clipping(p: Probe, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the float values of the calibration images outside the calibrated range (by
    more than a step), and the number of values: the float model alone."""
    n = len(p.mapping.points)
    clipped, values = np.zeros(n), np.zeros(n)

    @tf.function(reduce_retracing=True)
    def count(x: Any) -> Any:
        floats = _as_list(p.float_tap(x, training=False))
        return [tf.stack([_clipped(p, i, f), tf.cast(tf.size(f), tf.float32)]) for i, f in enumerate(floats)]

    traced = None
    for batch in batches:
        traced = traced or count.get_concrete_function(_any_batch(batch))
        for i, row in enumerate(traced(tf.constant(batch))):
            c, v = row.numpy()
            clipped[i] += c
            values[i] += v
    return clipped, values


class TFLiteTap:
    """model_quantized.tflite's tensor at each point, read after each invoke from an interpreter
    that keeps every tensor (``experimental_preserve_all_tensors``).

    The file's tensors are named by the TensorFlow ops they were converted from, joined by ";"
    (``model_1/conv2d_post_activation/Relu;model_1/keras_quantization_wrapper/BiasAdd;...``),
    which name MCT's layers: a point's tensor is the last integer tensor naming its holder or
    the layer the holder follows with as many values per image, preferably one with the
    holder's quantization step as its scale. Two traps: TFLite runs some operators in place (RESHAPE shares its
    input's buffer; SOFTMAX and activations overwrite theirs), so a tensor whose buffer a later
    operator other than a reshape writes holds that operator's values after invoke; such a
    tensor (typically the logits before a softmax) is not exposed, and its point is not compared."""

    def __init__(self, path: Path, mapping: Mapping, quantized_model: Any):
        self.interpreter = tf.lite.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.batch: int | None = None
        details = self.interpreter.get_tensor_details()
        operators = self.interpreter._get_ops_details()  # in execution order
        writer = {index: (k, op["op_name"]) for k, op in enumerate(operators) for index in op["outputs"]}
        readable = self._readable(writer)
        self.tensors: dict[int, int] = {}  # point index -> tensor index
        #: point index -> (scale, zero point) of the points compared, in point order
        self.exposed: dict[int, tuple[float, int]] = {}
        for i, point in enumerate(mapping.points):
            holder = quantized_model.get_layer(point.holder)
            names = {holder.name, _producers(holder)[0].name}
            size = int(np.prod(point.float_tensor.shape[1:]))
            step = _step_of(holder)
            found = None  # the last one: the layer's output after its fused activation
            for index in sorted(writer, key=lambda t: writer[t][0]):
                detail = details[index]
                if (
                    detail["dtype"] in (np.int8, np.uint8)
                    and names & _layer_names(detail["name"])
                    and int(np.prod(detail["shape"][1:])) == size
                ):
                    # one with the holder's step is preferred (a damaged file may have another)
                    scale = detail["quantization"][0]
                    if found is None or step <= 0 or math.isclose(scale, step, rel_tol=1e-3):
                        found = index
            if found is not None and found in readable:
                self.tensors[i] = found
                scale, zero = details[found]["quantization"]
                self.exposed[i] = (float(scale), int(zero))

    def _readable(self, writer: dict[int, tuple[int, str]]) -> set[int]:
        """The tensors whose buffer no later operator but a reshape writes."""
        address = {}
        for index in writer:
            try:
                view = self.interpreter.tensor(index)()
            except ValueError:  # a dynamic tensor, allocated at invoke (a cut detector's SHAPE/PACK int32)
                continue
            address[index] = view.__array_interface__["data"][0]
            del view  # no reference to the interpreter's buffers may outlive this call
        readable = set()
        for index, (k, _) in writer.items():
            if index not in address:
                continue
            later = [op for t, (j, op) in writer.items() if j > k and address.get(t) == address[index]]
            if all(op in VIEW_OPERATORS for op in later):
                readable.add(index)
        return readable

    def read(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the file on ``batch``; the exposed points' integer tensors, in point order."""
        from .evaluate import _quantize_input

        if self.batch != batch.shape[0]:
            self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self.batch = batch.shape[0]
        self.interpreter.set_tensor(self.input["index"], _quantize_input(batch, self.input))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(self.tensors[i]) for i in self.exposed]


def _layer_names(tensor_name: str) -> set[str]:
    """The layers a converted tensor's name mentions (the second part of each op path)."""
    return {bits[1] for part in tensor_name.split(";") if len(bits := part.split("/")) > 1}


@dataclass(frozen=True)
class Finding:
    kind: str  # results.FindingResult.kind: "unbalanced_concatenation", "calibration_mismatch", ...
    layer: str
    evidence: dict[str, Any]
    suggestion: str


def table(p: Probe, sums: Sums) -> list[dict[str, Any]]:
    """Per point, in graph order: the figures a report shows."""
    rows = []
    for i, point in enumerate(p.mapping.points):
        rows.append(
            {
                "layer": point.name,
                "kind": point.kind,
                "sqnr_db": _rounded(sqnr_db(sums.signal[i], sums.noise[i])),
                "local_sqnr_db": _rounded(sqnr_db(sums.signal[i], sums.local_noise[i])),
                "activation_sqnr_db": _rounded(sqnr_db(sums.signal[i], sums.activation_noise[i])),
                "tflite_compared": bool(sums.tflite_noise.size and not np.isnan(sums.tflite_noise[i])),
                "tflite_sqnr_db": _tflite_sqnr(sums, i),
                "clipped_share": _share(sums.clipped[i], sums.values[i]),
                "calibration_clipped_share": _share(sums.calibration_clipped[i], sums.calibration_values[i])
                if sums.calibration_values.size and sums.calibration_values[i]
                else None,
                "max_abs": float(sums.max_abs[i]),
                "p999_abs": None if np.isnan(sums.p999[i]) else float(sums.p999[i]),
                "slices": [
                    {
                        "input": name,
                        "sqnr_db": _rounded(sqnr_db(sums.slice_signal[i][j], sums.slice_noise[i][j])),
                        "max_abs": float(sums.slice_max_abs[i][j]),
                    }
                    for j, (name, _, _) in enumerate(point.slices)
                ],
            }
        )
    return rows


def _share(part: float, whole: float) -> float:
    return float(part / whole) if whole else 0.0


def _tflite_sqnr(sums: Sums, i: int) -> float | None:
    if not sums.tflite_noise.size or np.isnan(sums.tflite_noise[i]):
        return None
    return _rounded(sqnr_db(sums.signal[i], sums.tflite_noise[i]))


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 2)


def findings(p: Probe, sums: Sums) -> list[Finding]:
    result = []
    for i, point in enumerate(p.mapping.points):
        if len(point.slices) > 1:
            largest = sums.slice_max_abs[i]
            positive = largest[largest > 0]
            if positive.size > 1 and positive.max() / positive.min() > UNBALANCED_RATIO:
                small = int(np.argmin(np.where(largest > 0, largest, np.inf)))
                result.append(
                    Finding(
                        "unbalanced_concatenation",
                        point.name,
                        {
                            "range_ratio": round(float(positive.max() / positive.min()), 1),
                            "inputs_max_abs": {n: float(m) for (n, _, _), m in zip(point.slices, largest, strict=True)},
                            "smallest_input": point.slices[small][0],
                            "smallest_input_sqnr_db": _rounded(
                                sqnr_db(sums.slice_signal[i][small], sums.slice_noise[i][small])
                            ),
                            "sqnr_db": _rounded(sqnr_db(sums.signal[i], sums.noise[i])),
                        },
                        "quantize the concatenation with 16-bit activations (imx500 TPC 4.0+, MCT's "
                        "BitWidthConfig), or rebalance the inputs' scales in the model",
                    )
                )
        unbalanced = bool(result) and result[-1].kind == "unbalanced_concatenation" and result[-1].layer == point.name
        # An unbalanced concatenation's big input is also an outlier channel of it: one finding is enough.
        if sums.max_abs[i] > p.steps[i]:  # a tensor whose every value is below one step carries no signal
            result.extend(f for f in _outliers(point, sums, i) if not (unbalanced and f.kind == "outlier_channel"))
        result.extend(_clipping(p, point, sums, i))
    return result + weight_findings(p)


def _clipping(p: Probe, point: Point, sums: Sums, i: int) -> list[Finding]:
    """A tensor that clips the evaluation images' activations much more than the calibration
    images': the calibrated range does not cover what the model meets (representative versus
    evaluation mismatch). Needs the calibration count (measure's ``calibration``)."""
    if not sums.calibration_values.size or not sums.calibration_values[i] or not sums.values[i]:
        return []
    evaluation = sums.clipped[i] / sums.values[i]
    calibration = sums.calibration_clipped[i] / sums.calibration_values[i]
    if evaluation < CLIP_SHARE or evaluation < CLIP_OVER_CALIBRATION * calibration:
        return []
    low, high = p.ranges[i]
    return [
        Finding(
            "calibration_mismatch",
            point.name,
            {
                "evaluation_clipped_share": round(float(evaluation), 4),
                "calibration_clipped_share": round(float(calibration), 4),
                "calibrated_range": [round(low, 6), round(high, 6)],
                "evaluation_max_abs": float(sums.max_abs[i]),
            },
            "the calibration images do not cover what the evaluation images produce here: calibrate on "
            "images like the deployment's (same source, exposure and preprocessing), or draw more of them "
            "(iteration_count, batch_size)",
        )
    ]


def weight_findings(p: Probe) -> list[Finding]:
    """Weight tensors that MCT quantizes per tensor (the target platform's choice:
    ``weights_per_channel_threshold`` false, e.g. the tflite TPC 1.0's fully connected layers)
    whose range one output channel dominates, leaving the others a few levels. Per-channel
    weights (every imx500 TPC's convolutions and dense layers) cannot have this problem."""
    found = []
    float_names = {layer.name for layer in p.mapping.float_model.layers} if p.mapping.float_model else set()
    for layer in p.quantized_model.layers:
        if not _is(layer, WRAPPER):
            continue
        for attribute, variable, quantizer in layer.get_weights_vars():
            if getattr(quantizer, "per_channel", True) or attribute not in ("kernel", "depthwise_kernel"):
                continue
            values = np.abs(np.asarray(variable))
            if values.ndim < 2:
                continue
            channels = values.reshape(
                -1, values.shape[-1] * (values.shape[-2] if attribute == "depthwise_kernel" else 1)
            )
            channel_max = channels.max(axis=0)
            live = channel_max[channel_max > 1e-6 * channel_max.max()] if channel_max.size else channel_max
            if live.size < CHANNELS:
                continue
            ratio = float(live.max() / np.median(live))
            if ratio > WEIGHT_CHANNEL_RATIO:
                bits = int(getattr(quantizer, "num_bits", 8))
                found.append(
                    Finding(
                        "weight_channel_outlier",
                        _user_layer(layer.layer.name, float_names),
                        {
                            "weight": attribute,
                            "channel": int(np.argmax(channel_max)),
                            "channel_max_abs": float(channel_max.max()),
                            "median_channel_max_abs": float(np.median(live)),
                            "ratio": round(ratio, 1),
                            "median_channel_levels": int(np.median(live) / channel_max.max() * 2 ** (bits - 1)),
                        },
                        "this target quantizes these weights per tensor: use a target that quantizes them per "
                        "channel (imx500), rescale that channel into the next layer, or use mixed precision",
                    )
                )
    return found


def _user_layer(inner: str, float_names: set[str]) -> str:
    """The user's layer behind a wrapped layer's name (``<conv>_bn``, ``<sep>_pw``, ``<bn>_<conv>``)."""
    if inner in float_names:
        return inner
    for suffix in (FOLDED_BN, "_pw", "_dw"):
        if inner.endswith(suffix) and inner[: -len(suffix)] in float_names:
            return inner[: -len(suffix)]
    return next((name for name in float_names if inner.endswith("_" + name)), inner)


def _outliers(point: Point, sums: Sums, i: int) -> list[Finding]:
    """Values far above the tensor's 99.9th percentile, and single channels far above the others
    (looked for only where the tensor's largest value exceeds one quantization step: below it
    every value rounds to 0 and ratios between channels mean nothing).

    A whole outlier channel is more than 0.1 % of the values, so the percentile test misses it:
    the per-channel maxima catch it (dead channels, max 0, are left out of the median)."""
    found = []
    per_batch = sums.values[i] / max(sums.images, 1) * min(sums.images, 16)
    p999 = sums.p999[i]
    if per_batch >= PERCENTILE_VALUES and p999 > 0 and sums.max_abs[i] / p999 > OUTLIER_RATIO:
        found.append(
            Finding(
                "activation_outlier",
                point.name,
                {
                    "max_abs": float(sums.max_abs[i]),
                    "p999_abs": float(p999),
                    "ratio": round(float(sums.max_abs[i] / p999), 1),
                },
                "clip the range (z_threshold, or the MAE/MSE error method) or use 16-bit activations here",
            )
        )
    channels = sums.channel_max[i]
    live = channels[channels > 1e-6 * channels.max()] if channels.size else channels
    if point.float_tensor.shape.rank >= 4 and live.size >= CHANNELS:
        ratio = float(live.max() / np.median(live))
        if ratio > CHANNEL_RATIO:
            found.append(
                Finding(
                    "outlier_channel",
                    point.name,
                    {
                        "channel": int(np.argmax(channels)),
                        "channel_max_abs": float(channels.max()),
                        "median_channel_max_abs": float(np.median(live)),
                        "ratio": round(ratio, 1),
                    },
                    "the target quantizes activations per tensor: rescale that channel into the next layer's "
                    "weights, clip the range (z_threshold), or use 16-bit activations here",
                )
            )
    return found


# --- The stage -----------------------------------------------------------------------------

#: Images per probe call: the activations of every point of one batch are held at once.
DIAGNOSIS_BATCH = 16


@dataclass(frozen=True)
class Diagnosis:
    """The stage's value: per point of the quantized model, in graph order, how far its tensor is
    from the float model's (cumulative) and how much error the layer adds itself (local), named
    by the user's layers; what looks wrong, with its evidence; and what could not be paired."""

    images: int
    seconds: float
    layers: list[dict[str, Any]]
    findings: list[Finding]
    unmapped: list[tuple[str, str]]

    def summary(self) -> dict[str, Any]:
        measured = [row["sqnr_db"] for row in self.layers if row["sqnr_db"] is not None]
        return {
            "images": self.images,
            "layers": len(self.layers),
            "lowest_sqnr_db": min(measured) if measured else None,
            "findings": [f"{f.kind}: {f.layer}" for f in self.findings],
        }


def run(
    ctx: RunContext, inputs: Inputs, loaded: Loaded, quantized: Quantized, exported: Exported, drawn: Drawn
) -> Diagnosis:
    """Stage ``diagnose``: the float model, MCT's quantized Keras model and the staged
    model_quantized.tflite on a fixed, seeded subset of the evaluation images
    (``diagnosis.images``), compared layer by layer; the float model also on as many of the
    calibration batches' images, for what the calibrated ranges clip there; and the classes the
    calibration batches drew."""
    from . import images as images_mod
    from .errors import calling

    config = inputs.config

    def batches(paths: Sequence[Path]) -> Iterator[np.ndarray]:
        for _, batch in images_mod.iter_batches(
            paths,
            DIAGNOSIS_BATCH,
            config.input_tensor_size,
            config.preprocessing,
            skip_corrupt=config.on_corrupt_image == "skip",
        ):
            if batch.pixels is not None:
                yield batch.pixels

    chosen = diagnosis_images(inputs.truth.images, config.diagnosis.images, config.seed)
    drawn_order = list(dict.fromkeys(int(i) for batch in drawn.batches for i in batch))
    calibration = [inputs.calibration_images[i] for i in drawn_order[: config.diagnosis.images]]
    staged = exported.models[QUANTIZED_VARIANT].staged
    float_model, quantized_model = loaded.model, quantized.model
    with calling("TensorFlow"):
        if config.task == "detection":  # up to the post-processing, which MCT leaves float and unquantized
            from .detection_cut import cut

            float_model, quantized_model = cut(float_model), cut(quantized_model)
        p = probe(float_model, quantized_model)
        tap = TFLiteTap(staged, p.mapping, quantized_model)
        sums = measure(p, batches(chosen), tap, batches(calibration))
    found = findings(p, sums)
    classes = calibration_classes(
        config.dataset_image_dir, inputs.calibration_images, drawn.batches, inputs.truth.labels, p.mapping
    )
    return Diagnosis(sums.images, round(sums.seconds, 3), table(p, sums), [*classes, *found], p.mapping.unmapped)


#: The export variant the TFLite comparison reads (results.json's tflite_quantized).
QUANTIZED_VARIANT = "tflite_quantized"
#: At most this many missing class names are listed in a finding's evidence.
LISTED_CLASSES = 20


def calibration_classes(
    root: Path,
    calibration_images: Sequence[Path],
    batches: Sequence[np.ndarray],
    labels: dict[str, int],
    mapping: Mapping,
) -> list[Finding]:
    """Where every calibration image sits in a sub-folder of ``root`` named like a class of the
    label file, the label file's classes of which no image was drawn into a calibration batch
    (the finding names the model's input layer: it is the calibration data that is short)."""
    folders = [
        path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else None
        for path in calibration_images
    ]
    if not folders or any(folder not in labels for folder in folders):
        return []
    drawn = {folders[int(i)] for batch in batches for i in batch}
    available = set(folders)
    missing = sorted(set(labels) - drawn, key=lambda name: labels[name])
    if not missing:
        return []
    input_layer = next((point.name for point in mapping.points if point.kind == "input"), "input")
    return [
        Finding(
            "calibration_classes_missing",
            input_layer,
            {
                "classes": len(labels),
                "classes_drawn": len(drawn),
                "classes_missing": len(missing),
                "missing_with_images": sum(name in available for name in missing),
                "missing": missing[:LISTED_CLASSES],
            },
            "the calibration batches never saw these classes: raise iteration_count or batch_size so every "
            "class is drawn, or add images of the missing classes to dataset_image_dir",
        )
    ]


def diagnosis_images(evaluation_images: Sequence[Path], count: int, seed: int) -> list[Path]:
    """``count`` of the evaluation images (all of them where there are fewer), drawn with the
    run's seed and kept in evaluation order: the same subset in every run of a configuration."""
    if count >= len(evaluation_images):
        return list(evaluation_images)
    chosen = np.random.default_rng(seed).choice(len(evaluation_images), size=count, replace=False)
    return [evaluation_images[i] for i in sorted(chosen)]
