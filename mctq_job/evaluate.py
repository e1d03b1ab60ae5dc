"""Stage ``evaluate``: top-1 and top-5 accuracy of every model on the same preprocessed
pixels, and each model's latency.

Each evaluation image is decoded and preprocessed once per run (the next batch on every core
while the current one runs); every batch is then fed to the Keras float model, MCT's quantized
Keras model and each TFLite file the export stage wrote (model.tflite, model_quantized.tflite
and the extra_exports). Only each image's top-1 class is kept, so memory grows by a few bytes
per image, whatever the image size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from . import images
from .config import Config
from .errors import InputDataError, calling
from .events import Stage
from .inputs import Inputs
from .progress import Progress
from .tasks import GroundTruth, task_for

if TYPE_CHECKING:
    from .context import RunContext
    from .export import Exported
    from .model import Loaded
    from .quantize import Quantized

EVAL_BATCH_SIZE = 64
LATENCY_WARMUP_RUNS = 3
LATENCY_RUNS = 20


class KerasPredictor:
    """A Keras model called through one traced graph (any batch size): eager calls would
    spend more time in Python than in the model's arithmetic."""

    def __init__(self, model: Any):
        self.model = model
        signature = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        self._graph = tf.function(lambda x: model(x, training=False), input_signature=[signature])

    def __call__(self, batch: np.ndarray) -> Any:
        found = self._graph(tf.convert_to_tensor(batch, tf.float32))
        if isinstance(found, (list, tuple)):  # a detector: its four outputs
            return [t.numpy() for t in found]
        return found.numpy()


class TFLitePredictor:
    """A tf.lite.Interpreter resized to each batch; (de)quantizes integer inputs/outputs."""

    def __init__(self, path: Path):
        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=images.usable_cpus())
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch: int | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.batch != batch.shape[0]:
            self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self.batch = batch.shape[0]
        self.interpreter.set_tensor(self.input["index"], _quantize_input(batch, self.input))
        self.interpreter.invoke()
        return _dequantize_output(self.interpreter.get_tensor(self.output["index"]), self.output)


class DetectionTFLitePredictor:
    """A detector's cut TFLite file (see :mod:`mctq_job.detection_cut`): its outputs read by
    signature name and dequantized, then the model's own post-processing applied in Python with
    its exact parameters; gives the four detection outputs as the Keras models do."""

    def __init__(self, path: Path, post: Callable[[dict[str, np.ndarray]], list[np.ndarray]]):
        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=images.usable_cpus())
        self.runner = self.interpreter.get_signature_runner()
        (self.input_name, self.input), *_ = self.runner.get_input_details().items()
        self.outputs = self.runner.get_output_details()
        self.post = post

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        found = self.runner(**{self.input_name: _quantize_input(batch, self.input)})
        return self.post({name: _dequantize_output(found[name], self.outputs[name]) for name in self.outputs})


def run(ctx: RunContext, inputs: Inputs, loaded: Loaded, quantized: Quantized, exported: Exported) -> Evaluation:
    """Stage ``evaluate``: the Keras models and the staged TFLite files (every exported variant
    that is a TFLite model, in the export stage's order) on the evaluation images."""
    progress = Progress(ctx.log, Stage.EVALUATE, len(inputs.truth.images), "image", task="evaluation")
    post = None
    if inputs.config.task == "detection":
        from .detection_cut import post_processing

        with calling("TensorFlow"):
            post = post_processing(loaded.model)
    found = predictors(
        {"keras": loaded.model, "keras_quantized": quantized.model},
        {name: file.staged for name, file in exported.models.items()},
        post,
    )
    evaluation = evaluate(found, inputs.truth, inputs.config, on_images=progress.advance, on_skip=ctx.skip_logger())
    progress.close()
    return evaluation


def predictors(
    keras_models: dict[str, Any],
    tflite_files: dict[str, Path],
    post: Callable[[dict[str, np.ndarray]], list[np.ndarray]] | None = None,
) -> dict[str, Callable[[np.ndarray], Any]]:
    """One predictor per evaluated model, Keras models first, in the order given. ``post``: a
    detector's post-processing, applied after the (cut) TFLite files."""
    with calling("TensorFlow"):
        found: dict[str, Callable[[np.ndarray], Any]] = {
            name: KerasPredictor(model) for name, model in keras_models.items()
        }
        for name, path in tflite_files.items():
            found[name] = TFLitePredictor(path) if post is None else DetectionTFLitePredictor(path, post)
    return found


def _quantize_input(batch: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return batch.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(batch / scale + zero), info.min, info.max).astype(dtype)


def _dequantize_output(values: np.ndarray, detail: dict) -> np.ndarray:
    if values.dtype == np.float32:
        return values
    scale, zero = detail["quantization"]
    return (values.astype(np.float32) - zero) * scale


@dataclass(frozen=True)
class Evaluation:
    """The stage's value: every model's outputs on the same pixels, scored by the task's
    tally, and each model's time and single-image latency."""

    image_count: int  # images evaluated (skipped ones excluded)
    tally: Any  # the task's scores of every model (tasks.classification.Tally or tasks.detection.Tally)
    seconds: dict[str, float]  # per model: time spent in its batched calls
    skipped: list[tuple[Path, str]]  # undecodable images left out (on_corrupt_image: skip)
    latencies: dict[str, dict[str, Any]]  # per model: single-image latency (see latency())
    batch_size: int = EVAL_BATCH_SIZE
    threads: int = field(default_factory=images.usable_cpus)

    def summary(self) -> dict[str, Any]:
        latency = {name: facts["median_ms"] for name, facts in self.latencies.items()}
        return {**self.tally.summary(), "latency_median_ms": latency}


def evaluate(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    truth: GroundTruth,
    config: Config,
    on_images: Callable[[int], None] = lambda n: None,
    on_skip: Callable[[Path, str], None] = lambda path, reason: None,
) -> Evaluation:
    """Decode each batch once, run every model on it, and hand the outputs to the task's tally."""
    paths = truth.images
    tally = task_for(config).tally(truth, list(predictors))
    seconds = dict.fromkeys(predictors, 0.0)
    evaluated, skipped, example = 0, [], None
    batches = images.iter_batches(
        paths,
        EVAL_BATCH_SIZE,
        config.input_tensor_size,
        config.preprocessing,
        skip_corrupt=config.on_corrupt_image == "skip",
    )
    for start, batch in batches:
        for path, reason in batch.skipped:
            skipped.append((path, reason))
            on_skip(path, reason)
        if batch.pixels is not None:
            indices = start + np.asarray(batch.kept, dtype=np.int64)
            evaluated += len(indices)
            example = batch.pixels[:1].copy() if example is None else example
            for name, predict in predictors.items():
                began = time.perf_counter()
                with calling("TensorFlow"):
                    outputs = predict(batch.pixels)
                seconds[name] += time.perf_counter() - began
                tally.add(name, outputs, indices)
        on_images(len(batch.kept) + len(batch.skipped))
    if example is None:
        raise InputDataError(
            f"key 'evaluate_image_dir': none of the {len(paths)} evaluation images could be "
            f"decoded; expected readable JPEG, PNG or BMP files"
        )
    with calling("TensorFlow"):
        latencies = {name: latency(predict, example) for name, predict in predictors.items()}
    return Evaluation(evaluated, tally, seconds, skipped, latencies)


def latency(
    predict: Callable[[np.ndarray], np.ndarray],
    example: np.ndarray,
    warmup: int = LATENCY_WARMUP_RUNS,
    runs: int = LATENCY_RUNS,
) -> dict[str, Any]:
    """Milliseconds per single-image call after warm-up: median and 90th percentile."""
    for _ in range(warmup):
        predict(example)
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        predict(example)
        samples.append(1000 * (time.perf_counter() - began))
    return {
        "batch_size": 1,
        "threads": images.usable_cpus(),
        "warmup_runs": warmup,
        "runs": runs,
        "median_ms": round(float(np.median(samples)), 3),
        "p90_ms": round(float(np.percentile(samples, 90)), 3),
    }
