"""What the job is asked to measure: a *task* knows its evaluation ground truth, what a
model's outputs must look like for it, and how outputs are scored.

A task is one module of this package holding one object that satisfies :class:`Task`; the
stages ask the configuration's task instead of knowing classification: the inputs stage
finds and checks the ground truth, the model stage checks the outputs against it, the
evaluate stage hands every model's outputs to the task's tally. Adding a task is a module
here, its configuration keys, and its line in :func:`task_for`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

    from ..config import Config
    from ..problems import Problems


class GroundTruth(Protocol):
    """The evaluation images in evaluation order, with what each should be found to hold."""

    @property
    def images(self) -> tuple[Path, ...]: ...

    @property
    def labels(self) -> dict[str, int]:
        """The label file: class name -> the model's class index."""
        ...

    @property
    def ignored(self) -> tuple[tuple[str, str], ...]:
        """(path, reason): harmless files beside the inputs that are not inputs."""
        ...

    def without(self, unreadable: set[Path]) -> GroundTruth:
        """The same ground truth less images that cannot be read (``on_corrupt_image: skip``)."""
        ...

    def summary(self) -> dict[str, Any]: ...


class Tally(Protocol):
    """Every evaluated model's outputs, scored against the ground truth as they come."""

    def add(self, model: str, outputs: Any, images: np.ndarray) -> None:
        """``outputs`` of ``model`` for the evaluation images at indices ``images``: what the
        task's models give (classification: one array (batch, classes); detection: the four
        arrays boxes, scores, classes, count)."""
        ...

    def summary(self) -> dict[str, Any]: ...


TruthT = TypeVar("TruthT", bound=GroundTruth)
TallyT = TypeVar("TallyT", bound=Tally, covariant=True)


class Task(Protocol[TruthT, TallyT]):
    name: str

    def ground_truth(self, config: Config, problems: Problems) -> TruthT:
        """Find and check the evaluation images and their ground truth; what is wrong goes
        into ``problems`` (all reported together, before any heavy work)."""
        ...

    def check_outputs(self, model: Any, config: Config, truth: TruthT) -> dict[str, Any]:
        """The facts of a loaded model's outputs, or an error saying how they cannot serve."""
        ...

    def tally(self, truth: TruthT, models: Sequence[str]) -> TallyT: ...


def task_for(config: Config) -> Task[Any, Any]:
    """The task the configuration asks for (``task``). Typed loosely: the stages that use it
    hand each task the ground truth it found itself."""
    if config.task == "detection":
        from .detection import DETECTION

        return DETECTION
    from .classification import CLASSIFICATION

    return CLASSIFICATION
