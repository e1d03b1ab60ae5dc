"""Quantization-aware training (``quantization_method`` ``qat``): MCT's Keras QAT on the labelled
calibration images.

MCT quantizes the model as PTQ does and wraps it for training
(``keras_quantization_aware_training_init_experimental``); the job trains it for ``qat.epochs``
passes over at most ``qat.images`` calibration images, labelled by their class sub-folder
(``dataset_image_dir/<class name>/...``, the label file's names), with Adam at
``qat.learning_rate``; MCT then turns it into the same kind of quantized model PTQ gives
(``keras_quantization_aware_training_finalize_experimental``), which the export stage writes as
for PTQ. Training is deterministic for a given seed: the images, their order in each epoch and
TensorFlow's kernels are all fixed by it (TensorFlow's op determinism is turned on for the rest
of the process: training is the last thing that could differ between runs).

:func:`labels_of` needs no TensorFlow: the recovery asks it whether QAT can be offered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputDataError

if TYPE_CHECKING:
    import numpy as np

    from .config import Config, Qat
    from .inputs import Inputs


def labels_of(root: Path, calibration_images: Sequence[Path], labels: Mapping[str, int]) -> list[int] | None:
    """Each calibration image's class (the model's output index), where every image sits in a
    sub-folder of ``root`` named like a class of the label file; None where any does not."""
    found = []
    for path in calibration_images:
        parts = path.relative_to(root).parts
        if len(parts) < 2 or parts[0] not in labels:
            return None
        found.append(labels[parts[0]])
    return found or None


#: Why QAT is not offered where the calibration images are not labelled (results.json's recovery.not_tried).
UNLABELLED = (
    "the calibration images are not labelled training data: dataset_image_dir has no class sub-folders "
    "named like the label file's classes"
)


def unlabelled_problem(config: Config) -> str:
    """The error of a ``qat`` configuration whose calibration images are not labelled."""
    return (
        f"key 'quantization_method': 'qat' trains on the calibration images, but {UNLABELLED} "
        f"({config.dataset_image_dir}); accepted: put each image in dataset_image_dir/<class name>/ "
        "(any sub-folders below), or quantization_method 'ptq' or 'gptq'"
    )


@dataclass(frozen=True)
class Training:
    """The labelled images QAT trains on, and how: batches drawn anew for each epoch."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    config: Config
    options: Qat

    @property
    def steps(self) -> int:
        """Batches per epoch (the last one may be smaller)."""
        return -(-len(self.paths) // min(self.config.batch_size, len(self.paths)))

    def epoch(self, number: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Epoch ``number``'s batches (pixels, labels), in an order fixed by the seed and the epoch."""
        import numpy as np

        from .images import load_batch

        config = self.config
        order = np.random.default_rng([config.seed, number]).permutation(len(self.paths))
        size = min(config.batch_size, len(self.paths))
        skip = config.on_corrupt_image == "skip"
        for start in range(0, len(order), size):
            chosen = order[start : start + size]
            batch = load_batch(
                [self.paths[i] for i in chosen], config.input_tensor_size, config.preprocessing, skip_corrupt=skip
            )
            if batch.pixels is not None:
                yield batch.pixels, self.labels[chosen][batch.kept]


def training_data(inputs: Inputs) -> Training:
    """The training images of a ``qat`` configuration: at most ``qat.images`` of the calibration
    images (drawn with the seed, kept in folder order), each labelled by its class folder."""
    import numpy as np

    config = inputs.config
    options = config.qat_options()
    assert options is not None
    labels = labels_of(config.dataset_image_dir, inputs.calibration_images, getattr(inputs.truth, "labels", {}))
    if labels is None:
        raise InputDataError(unlabelled_problem(config))
    indices = np.arange(len(labels))
    if len(indices) > options.images:
        indices = np.sort(np.random.default_rng(config.seed).choice(len(indices), options.images, replace=False))
    paths = tuple(inputs.calibration_images[i] for i in indices)
    return Training(paths, np.asarray(labels, dtype=np.int64)[indices], config, options)


def quantize_aware(
    model: Any,
    representative_data_gen: Callable,
    training: Training,
    core_config: Any,
    tpc: Any,
    on_epoch: Callable[[int, float | None], None],
) -> tuple[Any, Any]:
    """MCT's QAT: initialize from PTQ, train, finalize. Returns the quantized model (MCT's
    inferable quantizers, as PTQ's) and MCT's user information."""
    import model_compression_toolkit as mct
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    trainable, info, _ = mct.qat.keras_quantization_aware_training_init_experimental(
        model, representative_data_gen, core_config=core_config, target_platform_capabilities=tpc
    )
    train(trainable, model, training, on_epoch)
    return mct.qat.keras_quantization_aware_training_finalize_experimental(trainable), info


def train(model: Any, float_model: Any, training: Training, on_epoch: Callable[[int, float | None], None]) -> None:
    """``training.options.epochs`` passes of Adam on the cross-entropy of the labels; the loss
    takes the outputs as probabilities where the float model's are (a softmax), else as logits
    (the quantized model's own rows do not sum to 1 exactly). ``on_epoch(0, None)`` as training
    begins, ``on_epoch(epoch, mean loss)`` after each epoch."""
    import tensorflow as tf

    optimizer = tf.keras.optimizers.Adam(training.options.learning_rate)
    loss_of: Any = None
    on_epoch(0, None)
    for epoch in range(1, training.options.epochs + 1):
        total, seen = 0.0, 0
        for pixels, labels in training.epoch(epoch):
            if loss_of is None:
                probabilities = _probabilities(float_model(pixels))
                loss_of = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
            loss = _step(model, optimizer, loss_of, tf.constant(pixels), tf.constant(labels))
            total += float(loss) * len(labels)
            seen += len(labels)
        on_epoch(epoch, total / max(seen, 1))


def _step(model: Any, optimizer: Any, loss_of: Any, pixels: Any, labels: Any) -> Any:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = loss_of(labels, model(pixels, training=True))
    optimizer.apply_gradients(
        zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
    )
    return loss


def _probabilities(outputs: Any) -> bool:
    """Whether a batch of outputs is a probability distribution per row (a softmax's)."""
    import numpy as np

    values = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    return bool(values.min() >= 0 and values.max() <= 1 and np.allclose(values.sum(axis=1), 1, atol=1e-3))
