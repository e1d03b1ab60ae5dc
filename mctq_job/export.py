"""Stage ``export``: the two TFLite files.

``model_quantized.tflite`` comes from MCT's exporter (INT8 weights and activations, float
input and output); ``model.tflite`` from TensorFlow's own converter (float). Both are
written to temporary paths given by the caller and published later, all together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import model_compression_toolkit as mct
import tensorflow as tf
from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat


def export_quantized(quantized_model: Any, destination: Path) -> None:
    mct.exporter.keras_export_model(
        model=quantized_model, save_model_path=str(destination),
        serialization_format=KerasExportSerializationFormat.TFLITE,
        quantization_format=QuantizationFormat.INT8)
    if not destination.is_file() or destination.stat().st_size == 0:
        raise RuntimeError(f"MCT's exporter wrote no file at {destination}")


def convert_float(model: Any) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()
