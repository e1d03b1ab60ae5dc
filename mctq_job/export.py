"""Stage ``export``: the two TFLite files, staged for publication.

``model_quantized.tflite`` is made from MCT's quantized Keras model as ``export_format`` says:
``int8`` (the default: a fully integer model, see :mod:`mctq_job.tflite_int8`),
``mct_int8`` (MCT's own INT8 exporter) or ``fakely_quant`` (a float graph with
quantize/dequantize pairs, for checking the quantization itself). ``model.tflite`` comes
from TensorFlow's own converter (float). Both go to temporary paths of the run's staging
area and are published later, all together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import model_compression_toolkit as mct
import tensorflow as tf
from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat

from . import calibrate
from .artifacts import KERAS_FILE, MODEL_FILE, QUANTIZED_FILE, Staging
from .capture import NATIVE_OUTPUT_LIMIT
from .context import RunContext, output_errors
from .errors import ToolkitError, calling
from .events import Event

if TYPE_CHECKING:
    from .calibrate import Drawn
    from .float_worker import FloatConversion
    from .inputs import Inputs
    from .model import Loaded
    from .quantize import Quantized

#: MCT exporter formats, by export_format value.
MCT_FORMATS = {"mct_int8": QuantizationFormat.INT8, "fakely_quant": QuantizationFormat.FAKELY_QUANT}


@dataclass(frozen=True)
class TFLiteFile:
    """One exported TFLite model: where it will be published, where it is staged, its facts."""

    final: Path
    staged: Path
    size: int
    census: dict[str, Any]
    io: dict[str, Any]


@dataclass(frozen=True)
class KerasFile:
    """MCT's Keras export of the quantized model (imx500 target): the IMX500 converter's input."""

    final: Path
    staged: Path
    size: int


@dataclass(frozen=True)
class Exported:
    """The stage's value: the float and the quantized TFLite model, by results.json name, and
    the quantized Keras export where the target is the IMX500."""

    models: dict[str, TFLiteFile]
    keras: KerasFile | None = None

    def summary(self) -> dict[str, Any]:
        sizes = {f"{name}_bytes": model.size for name, model in self.models.items()}
        return {**sizes, **({"keras_quantized_bytes": self.keras.size} if self.keras else {})}


def run(ctx: RunContext, inputs: Inputs, loaded: Loaded, drawn: Drawn, quantized: Quantized) -> Exported:
    """Stage ``export``: stage model_quantized.tflite, model.tflite and, for the imx500 target,
    model_quantized.keras. The calibration batches give the full-integer export the ranges of
    the few tensors MCT leaves unquantized but TFLite must quantize (read only for those)."""
    config = inputs.config
    output_dir = config.output_dir
    with output_errors(output_dir):
        conversion = _float_conversion(ctx, inputs, loaded.info.parameters)
        keras = None
        if config.target_platform == "imx500":
            keras = export_keras(quantized.model, output_dir / KERAS_FILE, ctx.require_staging())
        quantized_final = output_dir / QUANTIZED_FILE
        quantized_bytes = quantized_tflite(
            quantized.model,
            ctx.require_staging().temp_path(quantized_final),
            config.export_format,
            config.quantized_io,
            calibrate.batches_of(inputs, drawn),
        )
        quantized_temp = ctx.write(quantized_final, quantized_bytes)
        float_final = output_dir / MODEL_FILE
        float_bytes = _float_bytes(ctx, conversion) if conversion else convert_float(loaded.model)
        float_temp = ctx.write(float_final, float_bytes)
    return Exported(
        {
            "tflite": _described(float_final, float_temp, float_bytes),
            "tflite_quantized": _described(quantized_final, quantized_temp, quantized_bytes),
        },
        keras,
    )


def _float_conversion(ctx: RunContext, inputs: Inputs, parameters: int) -> FloatConversion | None:
    """model.tflite's conversion in a worker, overlapping the quantized export (both mostly on one
    core), for models large enough to gain and where a second core is there to take it."""
    from . import float_worker
    from .images import usable_cpus

    if parameters < float_worker.WORKER_MIN_PARAMETERS or usable_cpus() < 2:
        return None
    capture = ctx.temp_folder("float-tflite-") / "native-output.txt"
    return float_worker.FloatConversion(inputs.config.source_keras_model, capture, ctx.cleanups)


def _float_bytes(ctx: RunContext, conversion: FloatConversion) -> bytes:
    try:
        return conversion.result()
    finally:
        if text := conversion.output():
            ctx.log.debug(
                Event.LIBRARY_LOG.value, logger="native", message=text[:NATIVE_OUTPUT_LIMIT], worker="float-tflite"
            )


def export_keras(quantized_model: Any, final: Path, staging: Staging) -> KerasFile:
    """MCT's Keras export (its own quantizer format), written straight to its staged name."""
    staged = staging.temp_path(final)
    with calling("MCT exporter"):
        keras_export_model(quantized_model, staged)
    if not staged.is_file():
        raise ToolkitError("MCT exporter", FileNotFoundError(staged), f"it wrote no file at {staged}")
    return KerasFile(final, staged, staged.stat().st_size)


def keras_export_model(quantized_model: Any, destination: Path) -> None:
    """MCT's Keras export of its quantized model (Keras serialization, MCTQ quantization
    format): the file the IMX500 converter reads, loadable with
    mct_quantizers.keras_load_quantized_model."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    mct.exporter.keras_export_model(
        model=quantized_model,
        save_model_path=str(destination),
        serialization_format=KerasExportSerializationFormat.KERAS,
        quantization_format=QuantizationFormat.MCTQ,
    )


def _described(final: Path, staged: Path, data: bytes) -> TFLiteFile:
    """The staged file's facts, from the bytes just written there (not read back)."""
    from .tflite_census import census, io_quantization

    return TFLiteFile(final, staged, len(data), census(data), io_quantization(data))


def quantized_tflite(
    quantized_model: Any,
    scratch: Path,
    export_format: str,
    quantized_io: str,
    representative_data: Callable[[], Iterator[list[Any]]] | None = None,
) -> bytes:
    """model_quantized.tflite's bytes. MCT's exporter writes a file: ``scratch`` is its place."""
    if export_format == "int8":
        from .tflite_int8 import full_integer

        with calling("TensorFlow Lite converter"):
            return full_integer(quantized_model, quantized_io, representative_data)
    with calling("MCT exporter"):
        mct.exporter.keras_export_model(
            model=quantized_model,
            save_model_path=str(scratch),
            serialization_format=KerasExportSerializationFormat.TFLITE,
            quantization_format=MCT_FORMATS[export_format],
        )
    if not scratch.is_file() or scratch.stat().st_size == 0:
        raise ToolkitError("MCT exporter", FileNotFoundError(scratch), f"it wrote no file at {scratch}")
    return scratch.read_bytes()


def convert_float(model: Any) -> bytes:
    with calling("TensorFlow Lite converter"):
        data: bytes = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return data
