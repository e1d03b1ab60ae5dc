"""Stage ``calibrate``: the representative dataset MCT reads.

``iteration_count`` batches of ``batch_size`` images are drawn with the configured seed,
without replacement until every image has been used once, then from a fresh shuffle.
Batches are decoded when MCT asks for them, the next one while MCT works on the current one:
the folder is never held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import images
from .config import Config
from .errors import InputDataError

if TYPE_CHECKING:
    from .context import RunContext
    from .inputs import Inputs


@dataclass(frozen=True)
class Drawn:
    """The stage's value: which calibration images go into each batch."""

    batches: list[np.ndarray]
    images_available: int

    @property
    def distinct_images(self) -> int:
        return len({int(i) for batch in self.batches for i in batch})

    def summary(self) -> dict[str, Any]:
        return {"distinct_images": self.distinct_images}

    def facts(self) -> dict[str, Any]:
        """results.json's ``calibration`` object."""
        return {
            "batches": len(self.batches),
            "batch_size": len(self.batches[0]) if self.batches else 0,
            "images_available": self.images_available,
            "distinct_images_drawn": self.distinct_images,
        }


def run(ctx: RunContext, inputs: Inputs) -> Drawn:
    """Stage ``calibrate``: which images make up each calibration batch."""
    return draw(len(inputs.calibration_images), inputs.config)


def draw(n_images: int, config: Config) -> Drawn:
    return Drawn(draw_batches(n_images, config.batch_size, config.iteration_count, config.seed), n_images)


def draw_batches(n_images: int, batch_size: int, iteration_count: int, seed: int) -> list[np.ndarray]:
    """Indices of each calibration batch: successive slices of a stream of seeded shuffles.

    No index repeats until all ``n_images`` have been drawn; within one batch an index can
    repeat only where the batch spans the end of one shuffle and the start of the next.
    """
    if not 1 <= batch_size <= n_images:
        raise ValueError(f"batch_size must be in 1..{n_images}, got {batch_size}")
    rng = np.random.default_rng(seed)
    needed = batch_size * iteration_count
    stream = np.concatenate([rng.permutation(n_images) for _ in range(-(-needed // n_images))])
    return [stream[i * batch_size : (i + 1) * batch_size] for i in range(iteration_count)]


def batches_of(inputs: Inputs, drawn: Drawn, **callbacks: Any) -> Callable[[], Iterator[list[np.ndarray]]]:
    """MCT's representative dataset for these inputs and drawn batches (see below)."""
    return representative_dataset(inputs.calibration_images, drawn.batches, inputs.config, **callbacks)


def representative_dataset(
    paths: Sequence[Path],
    batches: list[np.ndarray],
    config: Config,
    on_batch: Callable[[], None] = lambda: None,
    on_skip: Callable[[Path, str], None] = lambda path, reason: None,
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """MCT's ``representative_data_gen``: each call yields the same batches, each as ``[array]``.

    With ``on_corrupt_image: skip`` an undecodable image is left out of its batch (reported
    through ``on_skip`` once); a batch of which nothing decodes is an error either way."""
    skip = config.on_corrupt_image == "skip"
    reported: set[Path] = set()

    def decode(number: int) -> images.Batch:
        return images.load_batch(
            [paths[i] for i in batches[number - 1]], config.input_tensor_size, config.preprocessing, skip_corrupt=skip
        )

    def generate() -> Iterator[list[np.ndarray]]:
        # Batch n + 1 decodes in a thread while MCT works on batch n (PIL releases the GIL); an
        # error of batch n + 1 is raised when MCT asks for it, as without the thread.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mctq-calibration") as ahead:
            upcoming = ahead.submit(decode, 1) if batches else None
            for number in range(1, len(batches) + 1):
                assert upcoming is not None
                batch = upcoming.result()
                upcoming = ahead.submit(decode, number + 1) if number < len(batches) else None
                for path, reason in batch.skipped:
                    if path not in reported:
                        reported.add(path)
                        on_skip(path, reason)
                if batch.pixels is None:
                    raise InputDataError(
                        f"key 'dataset_image_dir': no image of calibration batch {number} could be "
                        f"decoded ({batch.skipped[0][1]}); expected readable JPEG, PNG or BMP files"
                    )
                yield [batch.pixels]
                on_batch()

    return generate
