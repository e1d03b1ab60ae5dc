"""Stage ``model``: load the Keras model (TensorFlow is imported here, not before) and check
it against the configuration: one square RGB input of ``input_tensor_size``, one output wide
enough for every label id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, InputDataError, calling, first_line
from .inputs import Inputs


@dataclass(frozen=True)
class ModelInfo:
    input_shape: tuple[int | None, ...]
    output_width: int
    parameters: int

    def summary(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "output_width": self.output_width, "parameters": self.parameters}


@dataclass(frozen=True)
class Loaded:
    """The stage's value: the Keras model and what the job learned about it."""

    model: Any
    info: ModelInfo


def load(inputs: Inputs) -> Loaded:
    """Seed TensorFlow, load the model, check its contract."""
    import tensorflow as tf

    with calling("TensorFlow"):
        tf.keras.utils.set_random_seed(inputs.config.seed)
        tf.config.experimental.enable_op_determinism()
    path = inputs.config.source_keras_model
    try:
        model = tf.keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # TF raises many types for "not a Keras model"
        raise InputDataError(
            f"key 'source_keras_model': cannot load a Keras model from {path}: "
            f"{type(exc).__name__}: {first_line(exc, 300) or '(no message)'}; expected a SavedModel folder written by "
            f"Keras (model.save) or a .h5 / .keras file",
            file=str(path),
        ) from exc
    if not isinstance(model, tf.keras.Model):
        raise InputDataError(
            f"key 'source_keras_model': {path} is a TensorFlow SavedModel but not a Keras model; "
            f"expected one written by Keras (model.save)",
            file=str(path),
        )
    return Loaded(model, contract(model, inputs))


def contract(model: Any, inputs: Inputs) -> ModelInfo:
    """The model's facts, or the error that says how it does not fit the configuration."""
    config = inputs.config
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputDataError(
            f"key 'source_keras_model': the model has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; expected an image classifier with one of each"
        )
    in_shape = tuple(model.inputs[0].shape)
    out_shape = tuple(model.outputs[0].shape)
    if len(in_shape) != 4 or in_shape[3] not in (3, None):
        raise InputDataError(
            f"key 'source_keras_model': model input shape {in_shape} is not (batch, height, "
            f"width, 3); expected a model taking RGB images"
        )
    size = config.input_tensor_size
    if any(dim is not None and dim != size for dim in in_shape[1:3]):
        raise ConfigError(
            f"key 'input_tensor_size': {size} does not match the model's input "
            f"{in_shape[1]}x{in_shape[2]}; accepted: {in_shape[1] or in_shape[2]}",
            key="input_tensor_size",
        )
    if len(out_shape) != 2 or out_shape[1] is None:
        raise InputDataError(
            f"key 'source_keras_model': model output shape {out_shape} is not (batch, classes); "
            f"expected a classifier with one score per class"
        )
    width = int(out_shape[1])
    too_big = sorted((label, name) for name, label in inputs.labels.items() if label >= width)
    if too_big:
        label, name = too_big[0]
        raise InputDataError(
            f"label file {config.evaluate_label_file}: id {label} of {name!r} is beyond the "
            f"model's {width} outputs; accepted ids: 0 to {width - 1}",
            file=str(config.evaluate_label_file),
        )
    return ModelInfo(in_shape, width, int(model.count_params()))
