"""Latency and size of four TFLite files of one Keras model: TensorFlow's float conversion, the
job's full-integer export of MCT's model (``mctq_job.tflite_int8``), MCT's own INT8 export, and
the TFLite converter's own full-integer post-training quantization.

Default model: MobileNetV2 224x224, alpha 1.0, random weights; MCT and the converter are
calibrated on the same few batches of random images (enough for speed and size, not accuracy).
Latency is the median of single-image invocations at a fixed thread count, after a warm-up.

    .venv/bin/python -m bench.tflite_export [--batches 4] [--batch-size 16] [--threads 2] [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def mobilenet_v2_224():
    import tensorflow as tf

    return tf.keras.applications.MobileNetV2(alpha=1.0, input_shape=(224, 224, 3), weights=None)


def random_batches(shape: tuple, batches: int, batch_size: int, seed: int = 0) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (batch_size,) + tuple(shape)).astype(np.float32) for _ in range(batches)]


def converter_full_integer(model, batches: list) -> bytes:
    """The converter's own full-integer PTQ, float input/output, calibrated one image per sample."""
    from .converter_ptq import convert

    return convert(model, batches)


def mct_quantized(model, batches: list, platform: str = "imx500"):
    """MCT's PTQ called directly, as a notebook does: the platform's TPC, MCT's own statistics."""
    import model_compression_toolkit as mct

    from mctq_job.quantize import target_platform_capabilities

    def representative_data():
        for batch in batches:
            yield [batch]

    quantized, _ = mct.ptq.keras_post_training_quantization(
        model, representative_data, target_platform_capabilities=target_platform_capabilities(platform, "1.0")
    )
    return quantized


def mct_int8_bytes(quantized) -> bytes:
    """MCT's own INT8 TFLite export of ``quantized`` (MCT writes a file: a temporary one)."""
    import model_compression_toolkit as mct
    from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat

    with tempfile.TemporaryDirectory() as folder:
        destination = Path(folder) / "mct_int8.tflite"
        mct.exporter.keras_export_model(
            model=quantized,
            save_model_path=str(destination),
            serialization_format=KerasExportSerializationFormat.TFLITE,
            quantization_format=QuantizationFormat.INT8,
        )
        return destination.read_bytes()


def latencies_ms(files: dict[str, bytes], image, threads: int, runs: int) -> dict[str, float]:
    """Median milliseconds of one single-image invocation of each file (see latency_runs_ms)."""
    return {name: statistics.median(values) for name, values in latency_runs_ms(files, image, threads, runs).items()}


def latency_runs_ms(files: dict[str, bytes], image, threads: int, runs: int) -> dict[str, list[float]]:
    """Milliseconds of each single-image invocation of each file, ``runs`` per file. The files
    take turns in blocks (two passes over all files), so that load from other processes on a
    shared machine falls on all of them alike; one invocation at a time per file would not do,
    since an interpreter's worker threads keep spinning briefly after each call and slow the
    next file's. The fastest run is the figure least moved by outside load."""
    import tensorflow as tf

    from mctq_job.evaluate import _quantize_input

    interpreters = {}
    for name, data in files.items():
        interpreter = tf.lite.Interpreter(model_content=data, num_threads=threads)
        interpreter.allocate_tensors()
        source = interpreter.get_input_details()[0]
        interpreter.set_tensor(source["index"], _quantize_input(image, source))
        for _ in range(3):
            interpreter.invoke()
        interpreters[name] = interpreter
    times: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(2):
        for name, interpreter in interpreters.items():
            for _ in range(max(1, runs // 2)):
                began = time.perf_counter()
                interpreter.invoke()
                times[name].append((time.perf_counter() - began) * 1000)
    return times


def measure(
    model_factory: Callable[[], Any] = mobilenet_v2_224,
    batches: int = 4,
    batch_size: int = 16,
    threads: int = 2,
    runs: int = 50,
    platform: str = "imx500",
    keep: Path | None = None,
) -> dict[str, Any]:
    """Size, latency and census of the four TFLite files, and the ratios the export is held to:
    full-integer latency over the converter's, full-integer size over float. ``keep``: a folder
    that also receives the four files."""
    import tensorflow as tf

    from mctq_job import tflite_census, tflite_int8

    model = model_factory()
    calibration = random_batches(model.input_shape[1:], batches, batch_size)
    began = time.perf_counter()
    quantized = mct_quantized(model, calibration, platform)
    mct_seconds = time.perf_counter() - began
    files = {
        "float": tf.lite.TFLiteConverter.from_keras_model(model).convert(),
        "full_integer": tflite_int8.full_integer(
            quantized, representative_data=lambda: ([batch] for batch in calibration)
        ),
        "mct_int8": mct_int8_bytes(quantized),
        "converter_int8": converter_full_integer(model, calibration),
    }
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (keep / f"{name}.tflite").write_bytes(data)
    latency = latency_runs_ms(files, calibration[0][:1], threads, runs)
    figures = {
        name: {
            "bytes": len(data),
            "latency_ms": statistics.median(latency[name]),
            "fastest_ms": min(latency[name]),
            "census": tflite_census.census(data),
        }
        for name, data in files.items()
    }
    return {
        "model": model.name,
        "input_shape": list(model.input_shape[1:]),
        "platform": platform,
        "calibration": f"{batches} batches of {batch_size} random images",
        "threads": threads,
        "runs": runs,
        "mct_ptq_seconds": round(mct_seconds, 1),
        "files": figures,
        "full_integer_latency_over_converter": figures["full_integer"]["latency_ms"]
        / figures["converter_int8"]["latency_ms"],
        "full_integer_fastest_over_converter": figures["full_integer"]["fastest_ms"]
        / figures["converter_int8"]["fastest_ms"],
        "full_integer_size_over_float": figures["full_integer"]["bytes"] / figures["float"]["bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--keep", type=Path, default=None, help="also write the four .tflite files to this folder")
    args = parser.parse_args()
    figures = measure(
        batches=args.batches, batch_size=args.batch_size, threads=args.threads, runs=args.runs, keep=args.keep
    )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
