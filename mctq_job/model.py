"""Stage ``model``: load the Keras model (TensorFlow is imported here, not before) and check
it against the configuration: one square RGB input of ``input_tensor_size``, one output wide
enough for every label id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InputDataError, UnsupportedModelError, calling, first_line
from .inputs import Inputs
from .tasks import task_for

if TYPE_CHECKING:
    from .context import RunContext


@dataclass(frozen=True)
class ModelInfo:
    input_shape: tuple[int | None, ...]
    outputs: dict[str, Any]  # what the task found in the model's outputs (classification: output_width)
    parameters: int

    def summary(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), **self.outputs, "parameters": self.parameters}


@dataclass(frozen=True)
class Loaded:
    """The stage's value: the Keras model and what the job learned about it."""

    model: Any
    info: ModelInfo

    def summary(self) -> dict[str, Any]:
        return self.info.summary()


def run(ctx: RunContext, inputs: Inputs) -> Loaded:
    """Stage ``model``; where the IMX500 package is asked for, a warning names the operators
    the converter is known to refuse, minutes before it runs."""
    loaded = load(inputs)
    imx500 = inputs.config.imx500
    if imx500 is not None and imx500.package:
        from .events import Event
        from .imx500 import expected_refusals

        found = expected_refusals(loaded.model)
        if found:
            ctx.log.warning(
                Event.IMX500_REFUSAL_EXPECTED.value,
                operators=found,
                message="Sony's IMX500 converter is known to refuse "
                + "; ".join(f"{f['operator']} (layer {f['layer']!r}): use {f['instead']}" for f in found),
            )
    return loaded


def load(inputs: Inputs) -> Loaded:
    """Seed TensorFlow, load the model, check its contract."""
    import tensorflow as tf

    with calling("TensorFlow"):
        tf.keras.utils.set_random_seed(inputs.config.seed)
        tf.config.experimental.enable_op_determinism()
    path = inputs.config.source_keras_model
    try:
        with _custom_layers(path):
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


def _custom_layers(path: Any) -> Any:
    """Where a .keras or .h5 file loads: inside edgemdt_cl's scope, so that its layers (a
    detector's SSDPostProcess) load (without it Keras fails with "'str' object is not
    callable"). A SavedModel folder loads as before."""
    import contextlib

    if str(path).endswith((".keras", ".h5")):
        from edgemdt_cl.keras import custom_layers_scope

        return custom_layers_scope()
    return contextlib.nullcontext()


def contract(model: Any, inputs: Inputs) -> ModelInfo:
    """The model's facts, or the error that says how it does not fit the configuration: one
    square RGB input of input_tensor_size, and the outputs the task needs."""
    config = inputs.config
    if len(model.inputs) != 1:
        raise UnsupportedModelError(
            f"key 'source_keras_model': the model has {len(model.inputs)} inputs; the job feeds one image "
            f"input (batch, height, width, 3)"
        )
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 4 or in_shape[3] not in (3, None):
        raise UnsupportedModelError(
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
    outputs = task_for(config).check_outputs(model, config, inputs.truth)
    return ModelInfo(in_shape, outputs, int(model.count_params()))
