"""Stage ``export``: the two TFLite files.

``model_quantized.tflite`` comes from MCT's exporter, as configured by ``export_format``:
``int8`` (8-bit integer kernels where MCT's exporter provides them, float input and output) or ``fakely_quant``
(a float graph with quantize/dequantize pairs, for checking the quantization itself);
``model.tflite`` from TensorFlow's own converter (float). Both are written to temporary
paths given by the caller and published later, all together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import model_compression_toolkit as mct
import tensorflow as tf
from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat

EXPORT_FORMATS = {"int8": QuantizationFormat.INT8, "fakely_quant": QuantizationFormat.FAKELY_QUANT}


def export_quantized(quantized_model: Any, destination: Path, export_format: str = "int8") -> None:
    mct.exporter.keras_export_model(
        model=quantized_model, save_model_path=str(destination),
        serialization_format=KerasExportSerializationFormat.TFLITE,
        quantization_format=EXPORT_FORMATS[export_format])
    if not destination.is_file() or destination.stat().st_size == 0:
        raise RuntimeError(f"MCT's exporter wrote no file at {destination}")


def convert_float(model: Any) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()
