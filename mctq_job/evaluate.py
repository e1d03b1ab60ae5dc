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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from . import images
from .config import Config
from .errors import InputDataError, calling
from .inputs import Inputs, Sample
from .progress import Progress

if TYPE_CHECKING:
    from .context import RunContext
    from .export import Exported
    from .model import Loaded
    from .quantize import Quantized

EVAL_BATCH_SIZE = 64
TOP_K = 5
LATENCY_WARMUP_RUNS = 3
LATENCY_RUNS = 20


class KerasPredictor:
    """A Keras model called through one traced graph (any batch size): eager calls would
    spend more time in Python than in the model's arithmetic."""

    def __init__(self, model: Any):
        self.model = model
        signature = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        self._graph = tf.function(lambda x: model(x, training=False), input_signature=[signature])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._graph(tf.convert_to_tensor(batch, tf.float32)).numpy()


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


def run(ctx: RunContext, inputs: Inputs, loaded: Loaded, quantized: Quantized, exported: Exported) -> Evaluation:
    """Stage ``evaluate``: the Keras models and the staged TFLite files (every exported variant
    that is a TFLite model, in the export stage's order) on the evaluation images."""
    progress = Progress(ctx.log, "evaluate", len(inputs.samples), "image", task="evaluation")
    found = predictors(
        {"keras": loaded.model, "keras_quantized": quantized.model},
        {name: file.staged for name, file in exported.models.items()},
    )
    evaluation = evaluate(found, inputs.samples, inputs.config, on_images=progress.advance, on_skip=ctx.skip_logger())
    progress.close()
    return evaluation


def predictors(
    keras_models: dict[str, Any], tflite_files: dict[str, Path]
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """One predictor per evaluated model, Keras models first, in the order given."""
    with calling("TensorFlow"):
        found: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            name: KerasPredictor(model) for name, model in keras_models.items()
        }
        found.update({name: TFLitePredictor(path) for name, path in tflite_files.items()})
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


@dataclass
class ModelScore:
    correct: int = 0
    correct_top5: int = 0
    seconds: float = 0.0
    predictions: list[np.ndarray] = field(default_factory=list)

    def predicted(self) -> np.ndarray:
        return np.concatenate(self.predictions) if self.predictions else np.zeros(0, np.int64)


@dataclass(frozen=True)
class Evaluation:
    """The stage's value: every model's predictions and latency on the same pixels."""

    image_count: int  # images evaluated (skipped ones excluded)
    labels: np.ndarray  # their labels, in evaluation order
    scores: dict[str, ModelScore]
    skipped: list[tuple[Path, str]]  # undecodable images left out (on_corrupt_image: skip)
    latencies: dict[str, dict[str, Any]]  # per model: single-image latency (see latency())
    batch_size: int = EVAL_BATCH_SIZE
    threads: int = field(default_factory=images.usable_cpus)

    def accuracy(self, name: str) -> float:
        return self.scores[name].correct / self.image_count

    def top5_accuracy(self, name: str) -> float:
        return self.scores[name].correct_top5 / self.image_count

    def summary(self) -> dict[str, Any]:
        accuracies = {f"top_1_accuracy_{name}": round(self.accuracy(name), 4) for name in self.scores}
        return {**accuracies, "latency_median_ms": {name: facts["median_ms"] for name, facts in self.latencies.items()}}


def evaluate(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    samples: Sequence[Sample],
    config: Config,
    on_images: Callable[[int], None] = lambda n: None,
    on_skip: Callable[[Path, str], None] = lambda path, reason: None,
) -> Evaluation:
    paths = [s.path for s in samples]
    all_labels = np.asarray([s.label for s in samples], dtype=np.int64)
    scores = {name: ModelScore() for name in predictors}
    evaluated, skipped, example = [], [], None
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
            truth = all_labels[start : start + EVAL_BATCH_SIZE][batch.kept]
            evaluated.append(truth)
            example = batch.pixels[:1].copy() if example is None else example
            _score_batch(predictors, scores, batch.pixels, truth)
        on_images(len(batch.kept) + len(batch.skipped))
    labels = np.concatenate(evaluated) if evaluated else np.zeros(0, np.int64)
    if example is None:
        raise InputDataError(
            f"key 'evaluate_image_dir': none of the {len(samples)} evaluation images could be "
            f"decoded; expected readable JPEG, PNG or BMP files"
        )
    with calling("TensorFlow"):
        latencies = {name: latency(predict, example) for name, predict in predictors.items()}
    return Evaluation(len(labels), labels, scores, skipped, latencies)


def _score_batch(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    scores: dict[str, ModelScore],
    pixels: np.ndarray,
    truth: np.ndarray,
) -> None:
    for name, predict in predictors.items():
        began = time.perf_counter()
        with calling("TensorFlow"):
            outputs = predict(pixels)
        score = scores[name]
        score.seconds += time.perf_counter() - began
        predicted = np.argmax(outputs, axis=-1).astype(np.int32)
        score.correct += int(np.sum(predicted == truth))
        score.correct_top5 += int(np.sum(np.any(_top_k(outputs, TOP_K) == truth[:, None], axis=1)))
        score.predictions.append(predicted)


def _top_k(outputs: np.ndarray, k: int) -> np.ndarray:
    """The k best classes of each row (unordered); all classes where there are fewer than k."""
    k = min(k, outputs.shape[-1])
    return np.argpartition(-outputs, k - 1, axis=-1)[:, :k]


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
