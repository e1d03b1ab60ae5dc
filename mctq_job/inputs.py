"""Stage ``inputs``: everything configuration.json points at is checked before any heavy work.

Pure file-system checks (no TensorFlow), so ``mctq-job validate`` answers in a fraction of a
second. Every problem found is reported together, each naming the key or file at fault and
what would be accepted. The model-dependent checks (input size, output width) follow in
:mod:`mctq_job.model` once TensorFlow has loaded the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import images
from .config import PATH_KEYS, Config
from .config_file import read_text
from .errors import ConfigError, InputDataError, MctqError, OutputError, numbered

if TYPE_CHECKING:
    from .imx500 import Converter

KERAS_FILE_SUFFIXES = (".h5", ".hdf5", ".keras")
LISTED = 5  # names shown in one message before "and N more"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    class_name: str


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of one run."""

    config: Config
    config_file: Path
    calibration_images: tuple[Path, ...]
    samples: tuple[Sample, ...]
    labels: dict[str, int]
    ignored: tuple[tuple[str, str], ...] = ()  # (path, reason): harmless files that are not inputs
    skipped: tuple[tuple[Path, str], ...] = ()  # (image, reason): unreadable, left out (on_corrupt_image: skip)
    imx500_converter: Converter | None = None  # found and probed once, where imx500.package is on

    def summary(self) -> dict[str, object]:
        classes = {s.class_name for s in self.samples}
        return {
            "calibration_images": len(self.calibration_images),
            "evaluation_images": len(self.samples),
            "classes": len(classes),
            "labels": len(self.labels),
            "ignored": len(self.ignored),
            "skipped": len(self.skipped),
        }


@dataclass
class _Problems:
    config: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def raise_any(self) -> None:
        problems = self.config + self.data + self.output
        if not problems:
            return
        kind: type[MctqError] = ConfigError if self.config else InputDataError if self.data else OutputError
        raise kind(numbered(problems), problems=problems)


def _listed(paths: list) -> str:
    shown = ", ".join(str(p) for p in paths[:LISTED])
    return shown + (f" and {len(paths) - LISTED} more" if len(paths) > LISTED else "")


def check(config: Config, config_file: Path) -> Inputs:
    """Check every path, folder and file the configuration (read from ``config_file``) names;
    raise one error listing every problem, or return the discovered inputs."""
    base_dir = config_file.parent
    problems = _Problems()
    for key in PATH_KEYS:
        _check_links(key, getattr(config, key), base_dir, problems)
    if problems.config:
        problems.raise_any()
    _check_model_path(config.source_keras_model, problems)
    calibration = _calibration_images(config, problems)
    labels = _labels(config.evaluate_label_file, problems)
    samples, ignored = _samples(config, labels, problems)
    calibration, samples, skipped = _unreadable_images(config, calibration, samples, problems)
    for key in ("output_dir", "evaluate_result_dir"):
        _check_writable(key, getattr(config, key), problems)
    problems.raise_any()
    return Inputs(config, config_file, tuple(calibration), tuple(samples), labels or {}, tuple(ignored), tuple(skipped))


def _unreadable_images(
    config: Config,
    calibration: list[Path],
    samples: list[Sample],
    problems: _Problems,
) -> tuple[list[Path], list[Sample], list[tuple[Path, str]]]:
    """Empty and non-image files, found from their first bytes before any heavy work: an
    error naming them, or (on_corrupt_image: skip) left out and reported."""
    bad = {
        path: reason
        for path in [*calibration, *(s.path for s in samples)]
        if (reason := images.sniff(path)) is not None
    }
    if not bad:
        return calibration, samples, []
    if config.on_corrupt_image == "fail":
        named = [f"{path} {reason}" for path, reason in bad.items()]
        problems.data.append(
            f"{len(bad)} unreadable image file(s): {_listed(named)}; replace or remove them, "
            f'or set "on_corrupt_image": "skip" to leave them out'
        )
        return calibration, samples, []
    calibration = [p for p in calibration if p not in bad]
    samples = [s for s in samples if s.path not in bad]
    if calibration and config.batch_size > len(calibration):
        problems.config.append(
            f"key 'batch_size': {config.batch_size} is more than the {len(calibration)} "
            f"readable images in {config.dataset_image_dir}; accepted: 1 to {len(calibration)}"
        )
    if not calibration or not samples:
        which = "dataset_image_dir" if not calibration else "evaluate_image_dir"
        problems.data.append(f"key '{which}': every image there is unreadable; expected JPEG, PNG or BMP files")
    return calibration, samples, [(p, f"{p} {r}") for p, r in bad.items()]


def _check_links(key: str, path: Path, base_dir: Path, problems: _Problems) -> None:
    """Symbolic links are refused, as the AITRIOS notebook did: the path itself and every folder named in the key."""
    try:
        written = path.relative_to(base_dir)
        start = base_dir
    except ValueError:
        written, start = path.relative_to(path.anchor), Path(path.anchor)
    current = start
    for part in written.parts:
        current = current / part
        if part not in ("..", ".") and current.is_symlink():
            problems.config.append(
                f"key '{key}': {current} is a symbolic link, which is not supported; "
                f"give the real path ({current.resolve()}) or copy the data there"
            )
            return


def _missing(key: str, path: Path, what: str) -> str:
    return f"key '{key}': {path} does not exist; expected {what}"


def _check_model_path(path: Path, problems: _Problems) -> None:
    key = "source_keras_model"
    accepted = "a Keras SavedModel folder (with saved_model.pb) or a .h5 / .keras file"
    if not path.exists():
        problems.config.append(_missing(key, path, accepted))
    elif path.is_dir() and not (path / "saved_model.pb").is_file():
        problems.data.append(
            f"key '{key}': folder {path} has no saved_model.pb, so it is not a SavedModel; expected {accepted}"
        )
    elif path.is_file() and path.suffix.lower() not in KERAS_FILE_SUFFIXES:
        problems.data.append(f"key '{key}': file {path} is not a .h5 or .keras file; expected {accepted}")


def _folder_problem(key: str, path: Path, what: str) -> str | None:
    if not path.exists():
        return _missing(key, path, what)
    if not path.is_dir():
        return f"key '{key}': {path} is a file; expected {what}"
    return None


def _calibration_images(config: Config, problems: _Problems) -> list[Path]:
    key, root = "dataset_image_dir", config.dataset_image_dir
    what = "a folder of calibration images (jpg, jpeg, png, bmp)"
    if problem := _folder_problem(key, root, what):
        problems.config.append(problem)
        return []
    found = images.scan(root, images.CALIBRATION_EXTENSIONS)
    if found.links:
        problems.data.append(
            f"key '{key}': symbolic links are not supported, found {_listed(found.links)}; "
            f"replace them with the files themselves"
        )
    if not found.files:
        others = (
            f" (it holds {found.others} other files: {_ext_counts(found.other_extensions)})" if found.others else ""
        )
        problems.data.append(
            f"key '{key}': no images under {root}{others}; expected files ending in "
            f"{', '.join(sorted(images.CALIBRATION_EXTENSIONS))} (any case), in any sub-folder"
        )
    elif config.batch_size > len(found.files):
        problems.config.append(
            f"key 'batch_size': {config.batch_size} is more than the {len(found.files)} "
            f"images in {root}; accepted: an integer from 1 to {len(found.files)}"
        )
    return found.files


def _ext_counts(counts: dict[str, int]) -> str:
    return ", ".join(
        f"{n} x .{ext}" if ext != "(none)" else f"{n} without extension"
        for ext, n in sorted(counts.items(), key=lambda kv: -kv[1])[:LISTED]
    )


def _labels(path: Path, problems: _Problems) -> dict[str, int] | None:
    key = "evaluate_label_file"
    accepted = 'a JSON object mapping class folder names to distinct integer ids, e.g. {"daisy": 0, "dandelion": 1}'
    if not path.exists():
        problems.config.append(_missing(key, path, accepted))
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


def _label_map(path: Path, data: object, accepted: str, problems: _Problems) -> dict[str, int] | None:
    if not isinstance(data, dict) or not data:
        problems.data.append(
            f"label file {path} holds {type(data).__name__ if data != {} else 'an empty object'}; expected {accepted}"
        )
        return None
    bad = [name for name, v in data.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        problems.data.append(
            f"label file {path}: the id of {_listed([repr(n) for n in bad])} is not an integer >= 0 "
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
    problems: _Problems,
) -> tuple[list[Sample], list[tuple[str, str]]]:
    key, root, ext = "evaluate_image_dir", config.evaluate_image_dir, config.evaluate_image_extension
    what = "a folder with one sub-folder of images per class (ImageNet layout)"
    if problem := _folder_problem(key, root, what):
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
                f"class folder {_listed([repr(n) for n in unknown])} of {root} has no entry in label file "
                f"{config.evaluate_label_file}; known labels: {_listed(sorted(labels))}"
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
            f"key '{key}': symbolic links are not supported, found {_listed(links)}; "
            f"replace them with the files or folders themselves"
        )
    if labels is not None and not samples and not problems.data:
        seen = f"; it holds {_ext_counts(others)}" if others else ""
        problems.data.append(
            f"key 'evaluate_image_extension': no .{ext} images in the class folders of "
            f"{root}{seen}; accepted: the extension your evaluation images have"
        )
    return samples, ignored


def _check_writable(key: str, path: Path, problems: _Problems) -> None:
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problems.config.append(
            f"key '{key}': {existing} is a file, so folder {path} cannot be created there; expected a folder path"
        )
    elif not os.access(existing, os.W_OK | os.X_OK):
        verb = "written" if existing == path else f"created (in {existing})"
        problems.output.append(
            f"key '{key}': folder {path} cannot be {verb}: permission denied or read-only; expected a writable folder"
        )
