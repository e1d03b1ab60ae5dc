"""Stage ``export``: every file the configuration asks for, staged for publication.

Each file the stage can write is one :class:`Variant` of :data:`VARIANTS`: its results.json
name, its file, the Keras model it is made from, whether the evaluation runs it as a TFLite
model, the function making its bytes and when it applies. The stage makes the variants that
apply; the evaluation runs the TFLite ones and the report lists them, in :data:`VARIANTS`'
order. Adding a file means adding a variant here (and its name in :mod:`mctq_job.artifacts`).

- ``model.tflite``: TensorFlow's own converter (float), in a worker for large models;
- ``model_quantized.tflite``: MCT's quantized Keras model as ``export_format`` says: ``int8``
  (the default: a fully integer model, see :mod:`mctq_job.tflite_int8`), ``mct_int8`` (MCT's
  own INT8 exporter) or ``fakely_quant`` (a float graph with quantize/dequantize pairs);
- ``model_float16.tflite`` and ``model_dynamic_range.tflite`` (``extra_exports``): the TFLite
  converter's other post-training modes, float16 weights and int8 weights with float
  activations, made from the float model for comparison;
- ``model_quantized.keras`` (imx500 target): MCT's Keras export, the IMX500 converter's input.

All go to temporary paths of the run's staging area and are published later, all together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import model_compression_toolkit as mct
import tensorflow as tf
from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat

from . import calibrate
from .artifacts import EXTRA_EXPORT_FILES, KERAS_FILE, MODEL_FILE, QUANTIZED_FILE
from .capture import NATIVE_OUTPUT_LIMIT
from .context import RunContext, output_errors
from .errors import ToolkitError, calling
from .events import Event

if TYPE_CHECKING:
    from .calibrate import Drawn
    from .config import Config
    from .inputs import Inputs
    from .model import Loaded
    from .quantize import Quantized

#: MCT exporter formats, by export_format value.
MCT_FORMATS = {"mct_int8": QuantizationFormat.INT8, "fakely_quant": QuantizationFormat.FAKELY_QUANT}


@dataclass(frozen=True)
class Request:
    """What one variant's file is made from."""

    ctx: RunContext
    inputs: Inputs
    loaded: Loaded
    drawn: Drawn
    model: Any  # the Keras model the variant comes from (Variant.source)
    scratch: Path  # the file's staged path: a tool that writes files (MCT's exporters) writes there


@dataclass(frozen=True)
class Variant:
    """One file the export stage can write."""

    name: str  # its name in results.json's models section and in Exported
    file: str  # its file name in output_dir (mctq_job.artifacts)
    description: str  # results.json's models.<name>.description
    source: Literal["float", "quantized"]  # the Keras model it is made from
    tflite: bool  # evaluated as a TFLite model (top-1, top-5, per class, latency)
    #: The file's bytes, or the staged path where a tool wrote the file itself (not a TFLite variant)
    produce: Callable[[Request], bytes | Path]
    applies: Callable[[Config], bool] = field(default=lambda config: True)
    #: Where given: starts making the bytes in the background when the stage begins and returns
    #: what waits for them (None: not worth it here, ``produce`` is called instead). Such variants
    #: are made last, so the others overlap them.
    start: Callable[[Request], Callable[[], bytes] | None] | None = None


@dataclass(frozen=True)
class TFLiteFile:
    """One exported TFLite model: where it will be published, where it is staged, its facts."""

    final: Path
    staged: Path
    size: int
    census: dict[str, Any]
    io: dict[str, Any]
    description: str
    #: A detector's cut file: every output by signature name with its quantization (None otherwise).
    outputs: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class KerasFile:
    """An exported Keras model (MCT's Keras export, the IMX500 converter's input): not evaluated."""

    final: Path
    staged: Path
    size: int
    description: str


@dataclass(frozen=True)
class Exported:
    """The stage's value: every file written, by variant name, in :data:`VARIANTS`' order."""

    files: dict[str, TFLiteFile | KerasFile]

    @property
    def models(self) -> dict[str, TFLiteFile]:
        """The TFLite files the evaluation runs, by results.json name."""
        return {name: file for name, file in self.files.items() if isinstance(file, TFLiteFile)}

    @property
    def keras(self) -> KerasFile | None:
        """MCT's Keras export (imx500 target), the IMX500 converter's input."""
        file = self.files.get(KERAS_EXPORT)
        return file if isinstance(file, KerasFile) else None

    def summary(self) -> dict[str, Any]:
        return {f"{name}_bytes": file.size for name, file in self.files.items()}


def run(ctx: RunContext, inputs: Inputs, loaded: Loaded, drawn: Drawn, quantized: Quantized) -> Exported:
    """Stage ``export``: stage the file of each variant that applies. The calibration batches
    give the full-integer export the ranges of the few tensors MCT leaves unquantized but
    TFLite must quantize (read only for those)."""
    config = inputs.config
    staging = ctx.require_staging()
    variants = applying(config)
    models = {"float": loaded.model, "quantized": quantized.model}
    requests = {
        variant.name: Request(
            ctx, inputs, loaded, drawn, models[variant.source], staging.temp_path(config.output_dir / variant.file)
        )
        for variant in variants
    }
    made: dict[str, TFLiteFile | KerasFile] = {}
    with output_errors(config.output_dir):
        background = {
            variant.name: waiting
            for variant in variants
            if variant.start and (waiting := variant.start(requests[variant.name]))
        }
        for variant in sorted(variants, key=lambda variant: variant.name in background):
            request = requests[variant.name]
            data = background[variant.name]() if variant.name in background else variant.produce(request)
            final = config.output_dir / variant.file
            if isinstance(data, Path):  # already staged by the tool that made it: neither read back nor rewritten
                made[variant.name] = KerasFile(final, data, data.stat().st_size, variant.description)
                continue
            staged = ctx.write(final, data)
            made[variant.name] = _described(variant, final, staged, data, config.task == "detection")
    return Exported({variant.name: made[variant.name] for variant in variants})


def applying(config: Config) -> list[Variant]:
    """The variants this configuration writes, in :data:`VARIANTS`' order."""
    return [variant for variant in VARIANTS if variant.applies(config)]


def _described(
    variant: Variant, final: Path, staged: Path, data: bytes, detection: bool = False
) -> TFLiteFile | KerasFile:
    """The staged file's facts, from the bytes just written there (not read back)."""
    if not variant.tflite:
        return KerasFile(final, staged, len(data), variant.description)
    from .tflite_census import census, io_quantization

    outputs = None
    if detection:
        from .detection_cut import output_quantization

        outputs = output_quantization(data)
    return TFLiteFile(final, staged, len(data), census(data), io_quantization(data), variant.description, outputs)


def _for_tflite(request: Request) -> Any:
    """The Keras model a TFLite variant converts: a detector cut before its post-processing
    (the TFLite runtime has no kernel for it, see :mod:`mctq_job.detection_cut`), else the model."""
    if request.inputs.config.task != "detection":
        return request.model
    from .detection_cut import cut

    return cut(request.model)


# --- How each variant's bytes are made ------------------------------------------------------


def _float_tflite(request: Request) -> bytes:
    if request.inputs.config.task == "detection":
        from .detection_cut import convert_float as convert_cut

        with calling("TensorFlow Lite converter"):
            return convert_cut(_for_tflite(request))
    return convert_float(request.model)


def _float_tflite_worker(request: Request) -> Callable[[], bytes] | None:
    """model.tflite's conversion in a worker, overlapping the other exports (each mostly on one
    core), for models large enough to gain and where a second core is there to take it."""
    from . import float_worker
    from .images import usable_cpus

    ctx = request.ctx
    if request.inputs.config.task == "detection":  # the worker converts the whole model file: not the cut
        return None
    if request.loaded.info.parameters < float_worker.WORKER_MIN_PARAMETERS or usable_cpus() < 2:
        return None
    capture = ctx.temp_folder("float-tflite-") / "native-output.txt"
    conversion = float_worker.FloatConversion(request.inputs.config.source_keras_model, capture, ctx.cleanups)

    def result() -> bytes:
        try:
            return conversion.result()
        finally:
            if text := conversion.output():
                ctx.log.debug(
                    Event.LIBRARY_LOG.value, logger="native", message=text[:NATIVE_OUTPUT_LIMIT], worker="float-tflite"
                )

    return result


def _quantized_tflite(request: Request) -> bytes:
    config = request.inputs.config
    return quantized_tflite(
        _for_tflite(request),
        request.scratch,
        config.export_format,
        config.quantized_io,
        calibrate.batches_of(request.inputs, request.drawn),
    )


def _keras_export(request: Request) -> Path:
    """MCT's Keras export (its own quantizer format), written by MCT at the staged path."""
    staged = request.scratch
    with calling("MCT exporter"):
        keras_export_model(request.model, staged)
    if not staged.is_file():
        raise ToolkitError("MCT exporter", FileNotFoundError(staged), f"it wrote no file at {staged}")
    return staged


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


def _float16_tflite(request: Request) -> bytes:
    return convert_float(request.model, "float16")


def _dynamic_range_tflite(request: Request) -> bytes:
    return convert_float(request.model, "dynamic_range")


def _wanted(extra: str) -> Callable[[Config], bool]:
    return lambda config: extra in config.extra_exports


#: The name of MCT's Keras export among the variants (its size is stage.finish's keras_quantized_bytes).
KERAS_EXPORT = "keras_quantized"
#: Every file the stage can write, in the order they are made (a variant with a background start
#: last) and the TFLite ones are reported. tflite and tflite_quantized are always written: their
#: names are results.json's top_1_accuracy_tflite and top_1_accuracy_tflite_quantized.
VARIANTS: tuple[Variant, ...] = (
    Variant(
        KERAS_EXPORT,
        KERAS_FILE,
        f"{KERAS_FILE} (MCT's Keras export, the IMX500 converter's input)",
        "quantized",
        False,
        _keras_export,
        lambda config: config.target_platform == "imx500",
    ),
    Variant(
        "tflite",
        MODEL_FILE,
        "model.tflite (TensorFlow converter, float)",
        "float",
        True,
        _float_tflite,
        start=_float_tflite_worker,
    ),
    Variant(
        "tflite_quantized",
        QUANTIZED_FILE,
        "model_quantized.tflite (quantized by MCT)",
        "quantized",
        True,
        _quantized_tflite,
    ),
    Variant(
        "tflite_float16",
        EXTRA_EXPORT_FILES["float16"],
        f"{EXTRA_EXPORT_FILES['float16']} (TensorFlow converter, float16 weights)",
        "float",
        True,
        _float16_tflite,
        _wanted("float16"),
    ),
    Variant(
        "tflite_dynamic_range",
        EXTRA_EXPORT_FILES["dynamic_range"],
        f"{EXTRA_EXPORT_FILES['dynamic_range']} (TensorFlow converter, int8 weights, float activations)",
        "float",
        True,
        _dynamic_range_tflite,
        _wanted("dynamic_range"),
    ),
)


# --- The conversions --------------------------------------------------------------------------


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


def convert_float(model: Any, mode: Literal["float", "float16", "dynamic_range"] = "float") -> bytes:
    """TensorFlow's converter on the float Keras model: ``float`` as it is; ``float16`` with
    float16 weights (dequantized when the model loads); ``dynamic_range`` with int8 weights and
    float activations (no representative data: the weights' ranges are their own)."""
    with calling("TensorFlow Lite converter"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode != "float":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        data: bytes = converter.convert()
    return data
