"""A fully integer TFLite file made from MCT's quantized Keras model.

``full_integer`` rebuilds MCT's model as a plain Keras graph in which every quantized weight is a
constant behind a fake-quant op carrying MCT's exact grid, and every activation holder is a
fake-quant op with MCT's exact range; TensorFlow Lite's converter then turns each fake-quant
pair into int8 tensors, so every kernel runs as an int8 kernel with MCT's numbers. What has no
such int8 form (a look-up-table quantizer, 16-bit activations, a quantized constant operand, an
asymmetric weight grid) is refused with an UnsupportedModelError naming the layer and what is
supported. :mod:`mctq_job.tflite_census` describes the file made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from .config import QUANTIZED_IO
from .errors import UnsupportedModelError

#: The way out named by every refusal: MCT's own INT8 exporter keeps what it cannot make int8 in float.
OTHER_EXPORT = "export_format 'mct_int8' (MCT's own exporter, which leaves some layers in float) may export it"

#: Activations that TFLite fuses into a kernel, so that a kernel followed by one of them needs no
#: range of its own (MCT leaves such an intermediate tensor unquantized as well).
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


def full_integer(
    quantized_model: Any, quantized_io: str = "float", representative_data: Callable[[], Iterable] | None = None
) -> bytes:
    """TFLite bytes of MCT's ``quantized_model`` with int8 kernels, int8 constant weights and MCT's
    activation ranges; ``quantized_io`` "float" keeps float32 input/output, "int8"/"uint8" makes
    the model take and return integers quantized with MCT's input and output ranges.

    ``representative_data`` (MCT's kind: a callable yielding lists of input batches) is needed only
    where MCT leaves a tensor unquantized that TFLite must quantize (for example a convolution
    followed by swish, or an operator the target platform does not quantize): those tensors get
    the range measured on that data; without it such a model raises ValueError."""
    if quantized_io not in QUANTIZED_IO:
        raise ValueError(f"quantized_io must be one of {', '.join(QUANTIZED_IO)}, not {quantized_io!r}")
    model = fake_quant_model(quantized_model, representative_data)
    function = tf.function(model).get_concrete_function([tf.TensorSpec(t.shape, tf.float32) for t in model.inputs])
    # From a concrete function, and without TFLITE_BUILTINS_INT8: that option makes the converter
    # ask for a representative dataset before it has seen the fake-quant ops. census() checks
    # that nothing stayed in float.
    converter = concrete_converter(function, model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantized_io != "float":  # "int8", "uint8": the TensorFlow type of that name
        converter.inference_input_type = converter.inference_output_type = tf.as_dtype(quantized_io)
    return converter.convert()


def concrete_converter(function: Any, model: Any) -> tf.lite.TFLiteConverter:
    """TensorFlow Lite's converter for ``function``, a concrete function of the Keras ``model``.

    The converter goes through a SavedModel of the function, so that the file's signature keeps
    the function's input and output names. Its trackable object is a plain ``tf.Module`` holding
    ``model``'s variables, not the Keras model: saving a Keras model re-traces every layer for
    Keras' own SavedModel metadata, which the converter never reads (about 10 s of 13 for the
    float cut of an SSD MobileNetV2 320). The file is the same, byte for byte
    (tests/test_tflite_int8.py checks it on both kinds of conversion)."""
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], holder)


def unsupported(layer: str, problem: str, supported: str) -> UnsupportedModelError:
    """The refusal of one layer: what it has, what the full-integer export supports instead."""
    return UnsupportedModelError(
        f"layer '{layer}' has no int8 TFLite form: {problem}. The full-integer export "
        f"(export_format 'int8') supports {supported}; {OTHER_EXPORT}",
        layer=layer,
    )


def fake_quant_model(quantized_model: Any, representative_data: Callable[[], Iterable] | None = None) -> tf.keras.Model:
    """MCT's model with its wrappers and holders replaced by converter-friendly fake-quant layers,
    and measured ranges on the tensors MCT leaves unquantized but TFLite needs quantized."""
    holder_after = _holders_by_producer(quantized_model)
    measured = _measured_ranges(quantized_model, _unranged_layers(quantized_model, holder_after), representative_data)

    def replacement(layer: Any) -> Any:
        kind = type(layer).__name__
        if kind == "KerasActivationQuantizationHolder":
            return ActivationFakeQuant.from_quantizer(layer.activation_holder_quantizer, name=layer.name)
        if kind == "KerasQuantizationWrapper":
            return _then_quantized(FakeQuantWeightsLayer(layer), measured.get(layer.name))
        if isinstance(layer, tf.keras.layers.Concatenate):
            held = holder_after.get(layer.name)
            return RequantizingConcatenate(
                layer, *(_range(held.activation_holder_quantizer, layer.name) if held else measured[layer.name])
            )
        if _is_valid_average_pool(layer) and layer.name in holder_after:
            return AveragePoolAsDepthwise(layer)
        if _is_bounded_relu(layer) and layer.name in holder_after:
            held = holder_after[layer.name]
            if _clamped_by_holder(layer, held):
                # The holder's fake-quant right after it saturates at its top, below the bound:
                # the bound is then MCT's rounding already, and a plain ReLU is what TFLite fuses.
                return tf.keras.layers.ReLU(name=layer.name)
            return BoundedReLUOnGrid(layer, *_range(held.activation_holder_quantizer, layer.name))
        if _has_constant_operand(layer):
            held = holder_after.get(layer.name)
            step = _step(*_range(held.activation_holder_quantizer, layer.name)) if held else None
            return _then_quantized(ConstantOperandOnGrid(layer, step), measured.get(layer.name))
        return _then_quantized(layer, measured.get(layer.name))

    return tf.keras.models.clone_model(quantized_model, clone_function=replacement)


#: Layers whose output, when MCT leaves it unquantized, keeps its input's quantization in both
#: MCT (quantization preserving) and TFLite (same-scale operators): they never need a range.
RANGE_PRESERVING = (
    tf.keras.layers.Reshape,
    tf.keras.layers.Flatten,
    tf.keras.layers.MaxPooling2D,
    tf.keras.layers.Dropout,
    tf.keras.layers.ZeroPadding2D,
    tf.keras.layers.Permute,
    tf.keras.layers.InputLayer,
    tf.keras.layers.Cropping2D,
    tf.keras.layers.UpSampling2D,
    tf.keras.layers.AveragePooling2D,
)


def _unranged_layers(model: Any, holder_after: dict[str, Any]) -> list[Any]:
    """Layers whose output MCT leaves unquantized although TFLite needs its range: not held, not
    range preserving, and not consumed only by a ReLU that TFLite fuses into them."""
    return [
        layer
        for layer in model.layers
        if layer.inbound_nodes  # not a layer MCT only attached (the metadata layer of newer TPCs)
        and layer.name not in holder_after
        and type(layer).__name__ != "KerasActivationQuantizationHolder"
        and not isinstance(layer, RANGE_PRESERVING)
        and not _feeds_only_fused_relu(layer, holder_after)
        and not _is_model_output(model, layer)
    ]


def _consumers(layer: Any) -> list[Any]:
    return [node.outbound_layer for node in layer.outbound_nodes]


def _feeds_only_fused_relu(layer: Any, holder_after: dict[str, Any]) -> bool:
    consumers = _consumers(layer)
    return bool(consumers) and all(_is_fused_relu(c, holder_after.get(c.name)) for c in consumers)


def _is_fused_relu(layer: Any, holder: Any) -> bool:
    """Whether ``layer`` becomes a ReLU that TFLite fuses into the kernel before it, with MCT's
    range (its ``holder``): a ReLU, a ReLU6, or a ReLU with another upper bound (rebuilt as a
    plain ReLU, then a MINIMUM where the holder does not clamp at the bound), that MCT holds."""
    return holder is not None and _is_relu(layer)


def _is_relu(layer: Any) -> bool:
    if isinstance(layer, tf.keras.layers.ReLU):
        return layer.negative_slope == 0 and layer.threshold == 0
    return (
        isinstance(layer, tf.keras.layers.Activation)
        and getattr(layer.activation, "__name__", "") in FUSABLE_ACTIVATIONS[1:]
    )


def _is_bounded_relu(layer: Any) -> bool:
    """A ReLU whose upper bound is neither none nor 6, TFLite's only fused bounds for int8."""
    return _is_relu(layer) and getattr(layer, "max_value", None) not in (None, 6.0)


def _clamped_by_holder(layer: Any, holder: Any) -> bool:
    """Whether MCT's ``holder`` of the bounded ReLU ``layer`` has its largest value at or below
    the bound, so that quantizing with it clamps whatever exceeds the bound to what MCT gives."""
    if holder is None:
        return False
    return _range(holder.activation_holder_quantizer, layer.name)[1] <= float(layer.max_value)


def _is_model_output(model: Any, layer: Any) -> bool:
    return any(output is layer.output for output in model.outputs)


def _measured_ranges(
    model: Any, layers: list[Any], representative_data: Callable[[], Iterable] | None
) -> dict[str, tuple[float, float]]:
    """(min, max) of each layer's output in MCT's model over the representative data."""
    if not layers:
        return {}
    if representative_data is None:
        raise ValueError(
            "MCT leaves these outputs unquantized and TFLite needs their range: "
            f"{', '.join(layer.name for layer in layers)}; pass representative_data"
        )
    probe = tf.keras.Model(model.inputs, [layer.output for layer in layers])
    lows, highs = np.full(len(layers), np.inf), np.full(len(layers), -np.inf)
    for inputs in representative_data():
        outputs = probe(inputs if len(inputs) > 1 else inputs[0])
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        lows = np.minimum(lows, [float(tf.reduce_min(o)) for o in outputs])
        highs = np.maximum(highs, [float(tf.reduce_max(o)) for o in outputs])
    return {
        layer.name: (min(0.0, lo), max(0.0, hi, lo + 1e-6)) for layer, lo, hi in zip(layers, lows, highs, strict=False)
    }


def _then_quantized(layer: Any, measured: tuple[float, float] | None) -> Any:
    return layer if measured is None else QuantizedOutput(layer, *measured)


#: TFOpLambda symbols of the elementwise operators whose constant operand the export places on an
#: exact grid (``x + c``, ``tf.add``, ``x - c``, ``c - x``, ``x * c``, ``tf.multiply``).
CONSTANT_OPERAND_OPS = ("__operators__.add", "math.add", "math.subtract", "math.multiply")


def _step(minimum: float, maximum: float) -> float:
    """The step of an 8-bit grid from ``minimum`` to ``maximum``."""
    return (maximum - minimum) / 255


class ConstantOperandOnGrid(tf.keras.layers.Layer):
    """An elementwise TFOpLambda whose constant operand is put on a grid that holds it exactly.

    MCT adds or multiplies such a constant in float; TFLite's converter quantizes it with its own
    minimum and maximum, which rounds an array of constants (the grid offsets of a box decoding,
    say) to values MCT never used, and the output then rounds to a neighbouring step. The constant
    goes instead on the step of MCT's holder of the output (an addition or subtraction, where MCT
    holds the output), or on the finest power-of-two step that fits it in int8, whichever holds
    every value exactly; a constant that neither holds exactly is left to the converter."""

    def __init__(self, operation: Any, output_step: float | None, **kwargs: Any):
        super().__init__(name=operation.name, **kwargs)
        self.inner = operation
        self.steps = [output_step] if output_step and operation.symbol != "math.multiply" else []

    def call(self, *args: Any, **kwargs: Any) -> Any:
        operands = [*args, kwargs.get("x"), kwargs.get("y")]
        if any(tf.is_tensor(t) and not t.dtype.is_floating for t in operands):
            return self.inner(*args, **kwargs)  # integer arithmetic (shapes, indices): nothing to quantize
        args = tuple(self._on_grid(a) for a in args)
        kwargs = {key: self._on_grid(value) if key in ("x", "y") else value for key, value in kwargs.items()}
        return self.inner(*args, **kwargs)

    def _on_grid(self, operand: Any) -> Any:
        values = _constant_values(operand)
        if values is None or not np.all(np.isfinite(values)):
            return operand
        grid = exact_grid(values, self.steps)
        if grid is None:
            return operand
        return tf.quantization.fake_quant_with_min_max_vars(tf.constant(values), *grid, 8)


def _has_constant_operand(layer: Any) -> bool:
    """Whether ``layer`` is an elementwise TFOpLambda called with a constant array operand (other
    layers, and those with tensor or single-number operands only, are left exactly as they are)."""
    if type(layer).__name__ != "TFOpLambda" or layer.symbol not in CONSTANT_OPERAND_OPS:
        return False
    return any(
        _constant_values(operand) is not None
        for node in layer.inbound_nodes
        for operand in (*node.call_args, *node.call_kwargs.values())
    )


def _constant_values(operand: Any) -> np.ndarray | None:
    """The float32 values of a constant operand of several values (a list, an array or an eager
    tensor); None for a tensor of the graph, a non-number, or a single number, which the
    converter's own range (from zero to that number) already holds exactly."""
    if isinstance(operand, (bool, str)) or operand is None:
        return None
    if tf.is_tensor(operand):
        if tf.keras.backend.is_keras_tensor(operand):
            return None
        try:
            operand = operand.numpy()
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            return None  # a tensor of the graph being built
    try:
        values = np.asarray(operand)
    except (TypeError, ValueError):
        return None
    if values.dtype.kind not in "fiu" or values.size < 2:
        return None
    return values.astype(np.float32)


def exact_grid(values: np.ndarray, steps: list[float]) -> tuple[float, float] | None:
    """(min, max) of an 8-bit grid with zero on it that holds every one of ``values`` exactly:
    on the first of ``steps`` that does, else on the finest power-of-two step whose 256 levels
    reach them; None when no such grid holds them all."""
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if high == low:
        return None
    candidates = [*steps, 2.0 ** np.ceil(np.log2((high - low) / 255))]
    for step in candidates:
        levels = np.round(values.astype(np.float64) / step)
        if np.abs(levels * step - values).max() > 1e-6 * step:
            continue
        bottom = min(float(levels.min()), 0.0)
        if max(float(levels.max()), 0.0) - bottom > 255:
            continue
        return bottom * step, (bottom + 255) * step
    return None


class BoundedReLUOnGrid(tf.keras.layers.Layer):
    """A ReLU bounded at ``max_value`` below the top of MCT's holder of its output, as a plain
    ReLU quantized with the holder's range, then the minimum with the bound on that grid.

    Rounding to a grid keeps order, so rounding the minimum equals the minimum of the rounded
    values: MCT's numbers exactly, with the ReLU fused into the kernel before it and an int8
    MINIMUM whose operands share the output's scale, as TFLite's int8 MINIMUM requires."""

    def __init__(self, relu: Any, minimum: float, maximum: float, **kwargs: Any):
        super().__init__(name=relu.name, **kwargs)
        self.bound = float(relu.max_value)
        self.quantize = ActivationFakeQuant(minimum, maximum)

    def call(self, inputs: Any) -> Any:
        bound = self.quantize(tf.constant(self.bound, tf.float32, shape=(1,) * len(inputs.shape)))
        return tf.minimum(self.quantize(tf.nn.relu(inputs)), bound)


class QuantizedOutput(tf.keras.layers.Layer):
    """A layer followed by a fake-quant with a range measured on data (for outputs MCT keeps float)."""

    def __init__(self, layer: Any, minimum: float, maximum: float, **kwargs: Any):
        super().__init__(name=layer.name, **kwargs)
        self.inner = layer
        self.quantize = ActivationFakeQuant(minimum, maximum)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self.quantize(self.inner(*args, **kwargs))


def _holders_by_producer(model: Any) -> dict[str, Any]:
    """Each activation holder of MCT's model, keyed by the name of the layer whose output it quantizes."""
    holders = {}
    for layer in model.layers:
        if type(layer).__name__ == "KerasActivationQuantizationHolder":
            for node in layer.inbound_nodes:
                producers = node.inbound_layers
                for producer in producers if isinstance(producers, list) else [producers]:
                    holders[producer.name] = layer
    return holders


def _range(quantizer: Any, layer: str) -> tuple[float, float]:
    """(min, max) of an MCT activation quantizer of ``layer``'s output."""
    if not hasattr(quantizer, "min_range"):
        raise unsupported(
            layer,
            f"MCT quantizes its output with a look-up table ({type(quantizer).__name__})",
            "outputs quantized on a uniform grid (power-of-two, symmetric or uniform quantizers)",
        )
    return float(quantizer.min_range[0]), float(quantizer.max_range[0])


class ActivationFakeQuant(tf.keras.layers.Layer):
    """MCT's activation quantization as one fake-quant op: the converter reads its range as the
    int8 scale and zero point of the tensor."""

    def __init__(self, minimum: float, maximum: float, num_bits: int = 8, **kwargs: Any):
        super().__init__(**kwargs)
        self.minimum, self.maximum, self.num_bits = float(minimum), float(maximum), num_bits

    @classmethod
    def from_quantizer(cls, quantizer: Any, name: str) -> ActivationFakeQuant:
        """The fake-quant of MCT's activation holder ``name``; only 8-bit activations have an int8 form."""
        if quantizer.num_bits != 8:
            raise unsupported(name, f"{quantizer.num_bits}-bit activations", "8-bit activations")
        return cls(*_range(quantizer, name), quantizer.num_bits, name=name)

    def call(self, inputs: Any) -> Any:
        return tf.quantization.fake_quant_with_min_max_vars(inputs, self.minimum, self.maximum, self.num_bits)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "minimum": self.minimum, "maximum": self.maximum, "num_bits": self.num_bits}


NEGLIGIBLE = 1e-30


class RequantizingConcatenate(tf.keras.layers.Layer):
    """Concatenate whose inputs are first put on the output's grid.

    TFLite's int8 concatenation needs one scale for all inputs and the output; left alone, the
    converter picks one input's range for all of them and clips the others (a signed input can
    lose its negative half). Quantizing each input with the output's range first gives exactly
    MCT's result, since MCT quantizes the concatenated values elementwise with that range; the
    converter turns these into integer requantize operators. Where MCT leaves the concatenation
    unquantized (its inputs keep their own grids), the range measured on data stands in."""

    def __init__(self, concatenate: Any, minimum: float, maximum: float, **kwargs: Any):
        super().__init__(name=concatenate.name, **kwargs)
        self.axis = concatenate.axis
        self.requantize = ActivationFakeQuant(minimum, maximum)

    def call(self, inputs: Any) -> Any:
        # The converter merges a fake-quant that directly follows another one; an addition of a
        # negligible constant keeps the requantization as an int8 ADD with its own output range.
        return tf.concat([self.requantize(t + NEGLIGIBLE) for t in inputs], axis=self.axis)


def _is_valid_average_pool(layer: Any) -> bool:
    return (
        isinstance(layer, tf.keras.layers.AveragePooling2D)
        and layer.padding == "valid"
        and layer.data_format == "channels_last"
    )


class AveragePoolAsDepthwise(tf.keras.layers.Layer):
    """Average pooling as a depthwise convolution with every weight 1/(window size).

    TFLite's int8 average pooling keeps the input's scale, so MCT's own output range would come
    from a second rounding of the already rounded average; the convolution rounds once, straight
    to MCT's range, like MCT. The weight is exact: int8 127 with scale 1/(127 x window size)."""

    def __init__(self, pool: Any, **kwargs: Any):
        super().__init__(name=pool.name, **kwargs)
        self.pool_size, self.strides = tuple(pool.pool_size), tuple(pool.strides)

    def call(self, inputs: Any) -> Any:
        weight = 1.0 / float(np.prod(self.pool_size))
        kernel = tf.constant(np.full(self.pool_size + (inputs.shape[-1], 1), weight, np.float32))
        kernel = tf.quantization.fake_quant_with_min_max_vars(kernel, -128 * weight / 127, weight, 8)
        return tf.nn.depthwise_conv2d(inputs, kernel, (1,) + self.strides + (1,), "VALID")


class WeightGrid:
    """One quantized weight of MCT as int8 values on a per-channel (or per-tensor) grid of scales,
    with the zero point 0 that TFLite requires of int8 weights."""

    def __init__(self, quantizer: Any, weight: np.ndarray, layer: Any, layout: tuple | None = None):
        self.layer = layer.name
        if quantizer.num_bits > 8:
            raise unsupported(self.layer, f"{quantizer.num_bits}-bit weights", "weights of 8 bits or fewer")
        self.shape = weight.shape
        self.axis = _output_channel_axis(quantizer, layer, weight.ndim)
        self.scales = _grid_scales(quantizer, weight.shape, self.axis, layer)
        quantized = np.asarray(quantizer(tf.constant(weight, tf.float32)))
        self.integers = self._integers(quantized)
        if layout is not None:  # a new shape with the same output channels last (Dense as 1x1 conv)
            self.integers, self.shape = self.integers.reshape(layout), layout
            self.axis = None if self.axis is None else len(layout) - 1

    def _integers(self, quantized: np.ndarray) -> np.ndarray:
        on_last = self._channels_last(quantized)
        integers = np.round(on_last / self.scales)
        if np.abs(on_last - integers * self.scales).max() > 1e-6 * max(1.0, np.abs(on_last).max()):
            raise unsupported(
                self.layer, "MCT's quantized weights are not on its own grid", "weights on a uniform grid"
            )
        if integers.min() < -128 or integers.max() > 127:
            raise unsupported(self.layer, "MCT's quantized weights do not fit int8", "weights in -128..127 steps")
        return integers.astype(np.int8)

    def _channels_last(self, values: np.ndarray) -> np.ndarray:
        """``values`` with TFLite's output channels on the last axis (depthwise: in x multiplier)."""
        if self.axis is None:
            return values.reshape(-1)
        if self.axis == "depthwise":
            return values.reshape(values.shape[:-2] + (-1,))
        return np.moveaxis(values, self.axis, -1)

    def fake_quantized(self) -> tf.Tensor:
        """The weight as a constant behind a fake-quant op whose range gives exactly MCT's grid."""
        values = tf.constant(self.integers.astype(np.float32) * self.scales, tf.float32)
        if self.axis is None:
            scale = float(self.scales)
            grid = tf.quantization.fake_quant_with_min_max_vars(values, -128 * scale, 127 * scale, 8)
            return tf.reshape(grid, self.shape)
        grid = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            values, (-128 * self.scales).astype(np.float32), (127 * self.scales).astype(np.float32), 8
        )
        if self.axis == "depthwise":
            return tf.reshape(grid, self.shape)
        if self.axis == len(self.shape) - 1:
            return grid
        return tf.experimental.numpy.moveaxis(grid, -1, self.axis)


def _output_channel_axis(quantizer: Any, layer: Any, ndim: int) -> Any:
    if not getattr(quantizer, "per_channel", False):
        return None
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        return "depthwise"
    return quantizer.channel_axis % ndim


def _grid_scales(quantizer: Any, shape: tuple, axis: Any, layer: Any) -> Any:
    """Step of MCT's grid per TFLite output channel, checked to put zero on the grid's middle."""
    minimum, maximum = np.asarray(quantizer.min_range, np.float64), np.asarray(quantizer.max_range, np.float64)
    steps = 2**quantizer.num_bits - 1
    scales = (maximum - minimum) / steps
    zero_points = -minimum / scales
    if not np.allclose(zero_points, 2 ** (quantizer.num_bits - 1)):
        raise unsupported(
            layer.name,
            "MCT's weight grid is not symmetric around zero",
            "symmetric weight grids (power-of-two or symmetric quantizers; TFLite's int8 weights have zero point 0)",
        )
    if axis is None:
        return np.float32(scales.reshape(-1)[0])
    if axis == "depthwise":
        multiplier = shape[-1]
        if scales.size == shape[-2] and quantizer.channel_axis % len(shape) == 2:  # one per input channel
            scales = np.repeat(scales, multiplier)
        elif scales.size != shape[-2] * multiplier:
            raise unsupported(
                layer.name,
                f"{scales.size} weight scales for {shape[-2] * multiplier} depthwise output channels",
                "one scale per input channel or per output channel",
            )
    return scales.astype(np.float32)


class FakeQuantWeightsLayer(tf.keras.layers.Layer):
    """An MCT-wrapped layer (Conv2D, DepthwiseConv2D, Dense, ...) computing with its weights as
    fake-quantized constants, the way MCT's wrapper computes with its quantized weights."""

    def __init__(self, wrapper: Any, **kwargs: Any):
        super().__init__(name=wrapper.name, **kwargs)
        self.inner = wrapper.layer
        weights = wrapper.get_weights_vars()
        positional = [name for name, _, _ in weights if not isinstance(name, str)]
        if positional:
            raise unsupported(
                self.inner.name,
                f"MCT quantized a constant operand of this {type(self.inner).__name__} (positional weight "
                f"{positional[0]}), as the imx500 TPC does from version 4.0 on for the constants of Add, "
                f"Sub, Mul, Div, Concatenate and others",
                "quantized weights that are a layer's own (the kernel of Conv2D, DepthwiseConv2D, Dense); "
                "target_platform_version 1.0 leaves such constants in float",
            )
        self.grids = {
            name: WeightGrid(quantizer, np.asarray(weight), self.inner, _layout(self.inner, weight))
            for name, weight, quantizer in weights
        }

    def call(self, inputs: Any) -> Any:
        if isinstance(self.inner, tf.keras.layers.Dense):
            return self._dense_as_pointwise_conv(inputs)
        for name, grid in self.grids.items():
            setattr(self.inner, name, grid.fake_quantized())
        return self.inner.call(inputs)

    def _dense_as_pointwise_conv(self, inputs):
        """Dense as a 1x1 convolution: the converter keeps MCT's per-channel weight grid for a
        convolution, not for a fully connected operator (it would fall back to one scale)."""
        middle = [int(d) for d in inputs.shape[1:-1]]
        pixels = int(np.prod(middle)) if middle else 1
        kernel = self.grids["kernel"].fake_quantized()  # must feed the convolution directly
        outputs = tf.nn.conv2d(tf.reshape(inputs, [-1, pixels, 1, inputs.shape[-1]]), kernel, 1, "VALID")
        if self.inner.use_bias:
            outputs = tf.nn.bias_add(outputs, self.inner.bias)
        outputs = self.inner.activation(outputs)
        return tf.reshape(outputs, [-1] + middle + [outputs.shape[-1]])


def _layout(layer: Any, weight: Any) -> tuple | None:
    """Shape the weight takes in the rebuilt graph: a Dense kernel becomes a 1x1 convolution's."""
    if isinstance(layer, tf.keras.layers.Dense):
        return (1, 1) + tuple(weight.shape)
    return None
