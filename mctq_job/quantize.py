"""Stage ``quantize``: MCT quantization of the Keras model, with the configured target
platform, method (PTQ, GPTQ or QAT, see :mod:`mctq_job.qat`) and optional mixed-precision weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import model_compression_toolkit as mct
import tensorflow as tf

from . import calibrate, qat
from .config import Config
from .errors import calling
from .events import Event, Stage
from .progress import Progress

if TYPE_CHECKING:
    from .context import RunContext
    from .inputs import Inputs
    from .model import Loaded

#: ResourceUtilization fields reported in results.json (bytes, and bit-operations for bops).
RESOURCE_FIELDS = ("weights_memory", "activation_memory", "total_memory", "bops")


@dataclass(frozen=True)
class Quantized:
    model: Any  # MCT's quantized Keras model (fake-quant wrappers)
    info: Any  # MCT's UserInformation
    resource_utilization: dict[str, Any]  # {"float_8bit": {...}, "final": {...} or None}
    # {"path": "fast" or "mct", "reason": why}: which statistics collection ran (None: not from quantize())
    statistics: dict[str, str] | None = None
    skipped_images: tuple[tuple[Path, str], ...] = ()  # calibration images left out (on_corrupt_image: skip)

    def summary(self) -> dict[str, Any]:
        return {"resource_utilization": self.resource_utilization}


def run(
    ctx: RunContext,
    inputs: Inputs,
    loaded: Loaded,
    drawn: calibrate.Drawn,
    activation_bits: dict[str, int] | None = None,
) -> Quantized:
    """Stage ``quantize``: MCT reads the drawn batches (progress per batch) and quantizes.
    ``activation_bits`` (the recovery's IMX500-only attempt, never the configuration's): other
    activation bit widths for the named layers."""
    config = inputs.config
    skipped: list[tuple[Path, str]] = []
    training = qat.training_data(inputs) if config.quantization_method == "qat" else None
    progress = Progress(ctx.log, Stage.QUANTIZE, config.iteration_count, "batch", task="calibration")
    data = calibrate.batches_of(inputs, drawn, on_batch=progress.advance, on_skip=ctx.skip_logger(skipped))
    epochs: list[Progress] = []

    def on_epoch(epoch: int, loss: float | None) -> None:
        assert training is not None
        if loss is None:  # training begins, after MCT's calibration
            progress.close()
            epochs.append(Progress(ctx.log, Stage.QUANTIZE, training.options.epochs, "epoch", task="training"))
            return
        ctx.log.info(Event.QAT_EPOCH.value, epoch=epoch, epochs=training.options.epochs, loss=round(loss, 6))
        epochs[0].advance()

    with calling("MCT"):
        quantized = quantize(loaded.model, data, config, activation_bits, training, on_epoch)
    progress.close()
    for bar in epochs:
        bar.close()
    if quantized.statistics is not None:
        ctx.log.info(Event.STATISTICS.value, **quantized.statistics)
    return replace(quantized, skipped_images=tuple(skipped))


def target_platform_capabilities(name: str, version: str) -> Any:
    """MCT's TPC for the platform, repaired where MCT 2.6.1's own definition cannot run.

    The ``tflite`` TPC marks shape-only operators (reshape, max-pool, ...) as quantization
    preserving while leaving their activation quantization on, a combination MCT itself then
    rejects; the ``imx500`` TPC shows the intended form (activation quantization off)."""
    tpc = mct.get_target_platform_capabilities(tpc_version=version, device_type=name)
    return tpc.model_copy(update={"operator_set": tuple(_preserving_fixed(op) for op in tpc.operator_set or ())})


def _preserving_fixed(operator_set: Any) -> Any:
    options = operator_set.qc_options
    if options is None or not any(
        c.quantization_preserving and c.enable_activation_quantization for c in options.quantization_configurations
    ):
        return operator_set
    return operator_set.model_copy(update={"qc_options": options.clone_and_edit(enable_activation_quantization=False)})


def quantize(
    model: Any,
    representative_data_gen: Callable,
    config: Config,
    activation_bits: dict[str, int] | None = None,
    training: qat.Training | None = None,
    on_epoch: Callable[[int, float | None], None] = lambda epoch, loss: None,
) -> Quantized:
    # The same state at every quantization of a process, first or not (a recovery attempt
    # quantizes again): Keras' layer-name counters (MCT's layer names end up in the TFLite
    # file's tensor names, so its bytes) and the seed (GPTQ draws).
    tf.keras.backend.reset_uids()
    tf.keras.utils.set_random_seed(config.seed)
    tpc = target_platform_capabilities(config.target_platform, config.target_platform_version)
    core_config = _core_config(config, activation_bits)
    from . import fast_statistics

    # Bit-identical to MCT's own statistics collection, several times faster (fast_statistics.py).
    with fast_statistics.faster_statistics() as status:
        float_ru = mct.core.keras_resource_utilization_data(
            model, representative_data_gen, core_config=core_config, target_platform_capabilities=tpc
        )
        options: dict[str, Any] = {"core_config": core_config, "target_platform_capabilities": tpc}
        if config.mixed_precision is not None:
            options["target_resource_utilization"] = mct.core.ResourceUtilization(
                weights_memory=float_ru.weights_memory * config.mixed_precision.weights_memory_ratio
            )
        gptq = config.gptq_options()
        if training is not None:
            quantized, info = qat.quantize_aware(model, representative_data_gen, training, core_config, tpc, on_epoch)
        elif gptq is None:
            quantized, info = mct.ptq.keras_post_training_quantization(model, representative_data_gen, **options)
        else:
            gptq_config = mct.gptq.get_keras_gptq_config(
                n_epochs=gptq.epochs, use_hessian_based_weights=gptq.hessian, use_hessian_sample_attention=gptq.hessian
            )
            quantized, info = mct.gptq.keras_gradient_post_training_quantization(
                model, representative_data_gen, gptq_config=gptq_config, **options
            )
    final = getattr(info, "final_resource_utilization", None)
    return Quantized(
        quantized,
        info,
        {"float_8bit": resource_record(float_ru), "final": resource_record(final) if final is not None else None},
        statistics={"path": "fast" if status.active else "mct", "reason": status.reason},
    )


def _core_config(config: Config, activation_bits: dict[str, int] | None = None) -> Any:
    """MCT's CoreConfig from the configuration (``activations``, ``mixed_precision``), and
    per-layer activation bit widths where given (MCT's BitWidthConfig, by Keras layer name)."""
    activations = config.activations
    options: dict[str, Any] = {
        "quantization_config": mct.core.QuantizationConfig(
            activation_error_method=getattr(mct.core.QuantizationErrorMethod, activations.error_method.upper()),
            z_threshold=math.inf if activations.z_threshold is None else activations.z_threshold,
            shift_negative_activation_correction=activations.shift_negative_correction,
        )
    }
    if config.mixed_precision is not None:
        mp = config.mixed_precision
        options["mixed_precision_config"] = mct.core.MixedPrecisionQuantizationConfig(
            num_of_images=mp.images, use_hessian_based_scores=mp.hessian
        )
    if activation_bits:
        widths = mct.core.BitWidthConfig()
        for layer, bits in activation_bits.items():
            widths.set_manual_activation_bit_width(mct.core.network_editor.NodeNameFilter(layer), bits)
        options["bit_width_config"] = widths
    return mct.core.CoreConfig(**options)


def resource_record(utilization: Any) -> dict[str, float | None]:
    """MCT's ResourceUtilization as JSON-ready numbers; an unbounded (infinite) field is None."""
    values = {name: getattr(utilization, name, None) for name in RESOURCE_FIELDS}
    return {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in values.items()}


def versions() -> dict[str, str]:
    return {"model_compression_toolkit": mct.__version__}
