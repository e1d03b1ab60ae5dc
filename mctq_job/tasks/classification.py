"""The classification task: evaluation images in class folders (ImageNet layout) named in a
label file, one score per class out of the model, top-1 and top-5 accuracy.

Ground truth: ``evaluate_image_dir/<class name>/<any sub-folders>/<image>`` and
``evaluate_label_file`` mapping each class folder's name to the model's output index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import images
from ..config import Config
from ..config_file import read_text
from ..errors import InputDataError, UnsupportedModelError
from ..problems import Problems, extension_counts, folder_problem, listed, missing

if TYPE_CHECKING:  # numpy is imported where the evaluation needs it: validate stays light
    import numpy as np

TOP_K = 5


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    class_name: str


@dataclass(frozen=True)
class ClassFolders:
    """The ground truth: every evaluation image with its class, and the label file's classes."""

    labels: dict[str, int]  # class name -> model output index
    samples: tuple[Sample, ...]
    ignored: tuple[tuple[str, str], ...] = ()  # (path, reason): files outside any class folder

    @property
    def images(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self.samples)

    def without(self, unreadable: set[Path]) -> ClassFolders:
        return ClassFolders(self.labels, tuple(s for s in self.samples if s.path not in unreadable), self.ignored)

    def label_array(self) -> np.ndarray:
        import numpy as np

        return np.asarray([s.label for s in self.samples], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        return {"classes": len({s.class_name for s in self.samples}), "labels": len(self.labels)}


@dataclass
class ModelScore:
    """One model's predictions: the top-1 class of each evaluated image, and its hits."""

    correct: int = 0
    correct_top5: int = 0
    seconds: float = 0.0  # time spent in the model's calls (the evaluate stage adds it)
    predictions: list[np.ndarray] = field(default_factory=list)

    def predicted(self) -> np.ndarray:
        import numpy as np

        return np.concatenate(self.predictions) if self.predictions else np.zeros(0, np.int64)


class Tally:
    """Top-1 and top-5 hits of every model, and each image's top-1 class (a few bytes per
    image, whatever the image size)."""

    def __init__(self, truth: ClassFolders, models: Sequence[str]):
        self._all_labels = truth.label_array()
        self.scores = {name: ModelScore() for name in models}
        self._evaluated: list[np.ndarray] = []

    def add(self, model: str, outputs: np.ndarray, images: np.ndarray) -> None:
        import numpy as np

        truth = self._all_labels[images]
        if model == next(iter(self.scores)):
            self._evaluated.append(truth)
        score = self.scores[model]
        predicted = np.argmax(outputs, axis=-1).astype(np.int32)
        score.correct += int(np.sum(predicted == truth))
        score.correct_top5 += int(np.sum(np.any(_top_k(outputs, TOP_K) == truth[:, None], axis=1)))
        score.predictions.append(predicted)

    @property
    def labels(self) -> np.ndarray:
        """The labels of the evaluated images, in evaluation order."""
        import numpy as np

        return np.concatenate(self._evaluated) if self._evaluated else np.zeros(0, np.int64)

    @property
    def image_count(self) -> int:
        return sum(len(batch) for batch in self._evaluated)

    def accuracy(self, name: str) -> float:
        return self.scores[name].correct / self.image_count

    def top5_accuracy(self, name: str) -> float:
        return self.scores[name].correct_top5 / self.image_count

    def summary(self) -> dict[str, Any]:
        return {f"top_1_accuracy_{name}": round(self.accuracy(name), 4) for name in self.scores}


def _top_k(outputs: np.ndarray, k: int) -> np.ndarray:
    """The k best classes of each row (unordered); all classes where there are fewer than k."""
    import numpy as np

    k = min(k, outputs.shape[-1])
    return np.argpartition(-outputs, k - 1, axis=-1)[:, :k]


class Classification:
    name = "classification"

    def ground_truth(self, config: Config, problems: Problems) -> ClassFolders:
        labels = label_file(config.evaluate_label_file, problems)
        samples, ignored = _samples(config, labels, problems)
        return ClassFolders(labels or {}, tuple(samples), tuple(ignored))

    def check_outputs(self, model: Any, config: Config, truth: ClassFolders) -> dict[str, Any]:
        """One output of one score per class, wide enough for every label id."""
        if len(model.outputs) != 1:
            names = ", ".join(repr(name) for name in model.output_names)
            raise UnsupportedModelError(
                f"key 'source_keras_model': the model has {len(model.outputs)} outputs ({names}); the "
                f"classification task reads one output of one score per class (batch, classes)",
                outputs=list(model.output_names),
            )
        out_shape = tuple(model.outputs[0].shape)
        if len(out_shape) != 2 or out_shape[1] is None:
            raise UnsupportedModelError(
                f"key 'source_keras_model': the model's output {model.output_names[0]!r} has shape {out_shape}, "
                f"not (batch, classes); the classification task reads one score per class"
            )
        width = int(out_shape[1])
        too_big = sorted((label, name) for name, label in truth.labels.items() if label >= width)
        if too_big:
            label, name = too_big[0]
            raise InputDataError(
                f"label file {config.evaluate_label_file}: id {label} of {name!r} is beyond the "
                f"model's {width} outputs; accepted ids: 0 to {width - 1}",
                file=str(config.evaluate_label_file),
            )
        return {"output_width": width}

    def tally(self, truth: ClassFolders, models: Sequence[str]) -> Tally:
        return Tally(truth, models)


CLASSIFICATION = Classification()


def label_file(path: Path, problems: Problems, names: str = "class folder names") -> dict[str, int] | None:
    """``evaluate_label_file``: class names (``names`` says whose) -> distinct model output indices."""
    key = "evaluate_label_file"
    accepted = f'a JSON object mapping {names} to distinct integer ids, e.g. {{"daisy": 0, "dandelion": 1}}'
    if not path.exists():
        problems.config.append(missing(key, path, accepted))
        return None
    if not path.is_file():
        problems.config.append(f"key '{key}': {path} is a folder; expected a file holding {accepted}")
        return None
    try:
        data = json.loads(read_text(path))
    except UnicodeError as exc:
        problems.data.append(f"label file {exc}")
        return None
    except (OSError, json.JSONDecodeError) as exc:
        problems.data.append(f"label file {path} is not readable JSON ({exc}); expected {accepted}")
        return None
    return _label_map(path, data, accepted, problems)


def _label_map(path: Path, data: object, accepted: str, problems: Problems) -> dict[str, int] | None:
    if not isinstance(data, dict) or not data:
        problems.data.append(
            f"label file {path} holds {type(data).__name__ if data != {} else 'an empty object'}; expected {accepted}"
        )
        return None
    bad = [name for name, v in data.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        problems.data.append(
            f"label file {path}: the id of {listed([repr(n) for n in bad])} is not an integer >= 0 "
            f"(got {json.dumps(data[bad[0]])}); expected {accepted}"
        )
        return None
    by_id: dict[int, list[str]] = {}
    for name, label in data.items():
        by_id.setdefault(label, []).append(name)
    shared = {i: names for i, names in by_id.items() if len(names) > 1}
    if shared:
        label, names = next(iter(shared.items()))
        problems.data.append(
            f"label file {path}: id {label} is given to {', '.join(map(repr, names))}; each class needs its own id"
        )
        return None
    return dict(data)


def _samples(
    config: Config,
    labels: dict[str, int] | None,
    problems: Problems,
) -> tuple[list[Sample], list[tuple[str, str]]]:
    key, root, ext = "evaluate_image_dir", config.evaluate_image_dir, config.evaluate_image_extension
    what = "a folder with one sub-folder of images per class (ImageNet layout)"
    if problem := folder_problem(key, root, what):
        problems.config.append(problem)
        return [], []
    samples: list[Sample] = []
    ignored: list[tuple[str, str]] = []
    class_dirs, links = [], []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                links.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                class_dirs.append(Path(entry.path))
            else:
                ignored.append((entry.path, "file outside any class folder"))
    if not class_dirs:
        problems.data.append(f"key '{key}': {root} has no class folders; expected {what}")
        return [], ignored
    if labels is not None:
        unknown = [d.name for d in class_dirs if d.name not in labels]
        if unknown:
            problems.data.append(
                f"class folder {listed([repr(n) for n in unknown])} of {root} has no entry in label file "
                f"{config.evaluate_label_file}; known labels: {listed(sorted(labels))}"
            )
    others: dict[str, int] = {}
    for class_dir in class_dirs:
        found = images.scan(class_dir, [ext])
        links += found.links
        for name, n in found.other_extensions.items():
            others[name] = others.get(name, 0) + n
        if labels is not None and class_dir.name in labels:
            samples += [Sample(p, labels[class_dir.name], class_dir.name) for p in found.files]
    if links:
        problems.data.append(
            f"key '{key}': symbolic links are not supported, found {listed(links)}; "
            f"replace them with the files or folders themselves"
        )
    if labels is not None and not samples and not problems.data:
        seen = f"; it holds {extension_counts(others)}" if others else ""
        problems.data.append(
            f"key 'evaluate_image_extension': no .{ext} images in the class folders of "
            f"{root}{seen}; accepted: the extension your evaluation images have"
        )
    return samples, ignored
