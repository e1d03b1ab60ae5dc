"""Time MCT's post-training quantization of MobileNetV2 224x224 unmodified and with
``mctq_job.fast_statistics``, on the same random calibration batches, and check that both give
the same quantized model (weights, activation thresholds) and the same INT8 TFLite bytes.

    .venv/bin/python bench/quantize_speed.py [--batches 10] [--batch-size 50] [--iterations 1] [--profile]

Prints one JSON object (``measure``'s result). ``--profile`` adds the top functions of a cProfile
of one fast-path call.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Images per calibration batch, and the model's input side.
BATCH_SIZE = 50
IMAGE_SIZE = 224


def calibration_batches(batches: int, batch_size: int = BATCH_SIZE, size: int = IMAGE_SIZE) -> list:
    """Seeded random float32 images in [-1, 1] (MobileNet's input range)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32) for _ in range(batches)]


def mobilenet_v2(size: int = IMAGE_SIZE):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    return tf.keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None)


def quantize_timed(model, batches: list, fast: bool) -> tuple[float, Any]:
    """Seconds of one ``keras_post_training_quantization`` call (fresh Keras names, seeded), and
    its quantized model."""
    import model_compression_toolkit as mct
    import tensorflow as tf

    from mctq_job import fast_statistics

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()

    def representative_data_gen():
        for batch in batches:
            yield [batch]

    with fast_statistics.faster_statistics() if fast else contextlib.nullcontext() as status:
        start = time.perf_counter()
        quantized, _ = mct.ptq.keras_post_training_quantization(model, representative_data_gen)
        seconds = time.perf_counter() - start
    if fast and not status.active:
        raise RuntimeError(f"the fast path did not run: {status.reason}")
    return seconds, quantized


def quantized_digest(model) -> str:
    """sha256 over every layer's weights and activation quantizer config, in layer order
    (layer names differ between runs in one process)."""
    import numpy as np

    digest = hashlib.sha256()
    for layer in model.layers:
        for weight in layer.get_weights():
            digest.update(np.asarray(weight).tobytes())
        holder = getattr(layer, "activation_holder_quantizer", None)
        if holder is not None:
            digest.update(json.dumps(holder.get_config(), sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def int8_tflite_digest(model) -> str:
    from tflite_export import mct_int8_bytes

    return hashlib.sha256(mct_int8_bytes(model)).hexdigest()


def measure(batches: int = 10, iterations: int = 1, batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """Median seconds of the PTQ call unmodified and with the fast path over ``iterations``
    alternating runs each, on ``batches`` batches of ``batch_size`` images, their ratio, and
    whether every run's quantized model and INT8 TFLite equal the first unmodified run's."""
    from mctq_job.images import usable_cpus

    model, data = mobilenet_v2(), calibration_batches(batches, batch_size)
    seconds: dict[str, list[float]] = {"mct": [], "fast": []}
    digests: dict[str, set[tuple[str, str]]] = {"mct": set(), "fast": set()}
    for _ in range(iterations):
        for path in ("mct", "fast"):
            elapsed, quantized = quantize_timed(model, data, fast=path == "fast")
            seconds[path].append(elapsed)
            digests[path].add((quantized_digest(quantized), int8_tflite_digest(quantized)))
    mct_s, fast_s = statistics.median(seconds["mct"]), statistics.median(seconds["fast"])
    return {
        "model": f"MobileNetV2 {IMAGE_SIZE}x{IMAGE_SIZE}, weights=None",
        "batches": batches,
        "batch_size": batch_size,
        "iterations": iterations,
        "cpus": usable_cpus(),
        "mct_seconds": round(mct_s, 1),
        "fast_seconds": round(fast_s, 1),
        "ratio": round(fast_s / mct_s, 3),
        "runs_seconds": {k: [round(s, 1) for s in v] for k, v in seconds.items()},
        "identical": len(digests["mct"] | digests["fast"]) == 1,
    }


def profile_fast(batches: int, batch_size: int = BATCH_SIZE, top: int = 15) -> str:
    """cProfile of one fast-path PTQ call: the ``top`` functions by own time."""
    model, data = mobilenet_v2(), calibration_batches(batches, batch_size)
    profiler = cProfile.Profile()
    profiler.runcall(quantize_timed, model, data, True)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.batches, args.iterations, args.batch_size)), flush=True)
    if args.profile:
        print(profile_fast(args.batches, args.batch_size), flush=True)


if __name__ == "__main__":
    main()
