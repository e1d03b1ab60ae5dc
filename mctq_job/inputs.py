"""Stage ``inputs``: everything configuration.json points at is checked before any heavy work.

Pure file-system checks (no TensorFlow), so ``mctq-job validate`` answers in a fraction of a
second. Every problem found is reported together, each naming the key or file at fault and
what would be accepted. The model-dependent checks (input size, output width) follow in
:mod:`mctq_job.model` once TensorFlow has loaded the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import images
from .config import OPTIONAL_PATH_KEYS, PATH_KEYS, Config
from .events import Event
from .problems import Problems, extension_counts, folder_problem, listed, missing
from .tasks import GroundTruth, task_for

if TYPE_CHECKING:
    from .configure import Configured
    from .context import RunContext
    from .imx500 import Converter

KERAS_FILE_SUFFIXES = (".h5", ".hdf5", ".keras")


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of one run: the calibration images, and the evaluation images with
    the ground truth the configuration's task found for them."""

    config: Config
    config_file: Path
    calibration_images: tuple[Path, ...]
    truth: GroundTruth  # the task's: classification.ClassFolders, detection.Annotations
    skipped: tuple[tuple[Path, str], ...] = ()  # (image, reason): unreadable, left out (on_corrupt_image: skip)
    imx500_converter: Converter | None = None  # found and probed once, where imx500.package is on

    @property
    def ignored(self) -> tuple[tuple[str, str], ...]:
        """(path, reason): harmless files beside the inputs that are not inputs."""
        return self.truth.ignored

    def summary(self) -> dict[str, object]:
        return {
            "calibration_images": len(self.calibration_images),
            "evaluation_images": len(self.truth.images),
            **self.truth.summary(),
            "ignored": len(self.ignored),
            "skipped": len(self.skipped),
            **(
                {
                    "imx500_converter": {
                        "path": str(self.imx500_converter.path),
                        "version": self.imx500_converter.version,
                    }
                }
                if self.imx500_converter
                else {}
            ),
        }


def run(ctx: RunContext, configured: Configured) -> Inputs:
    """Stage ``inputs``: every path the configuration names checked, the images and labels
    found, and Sony's converter found and probed where the IMX500 package is asked for."""
    checked = check(configured.config, configured.file)
    imx500 = configured.config.imx500
    if imx500 is not None and imx500.package:
        from . import imx500 as imx500_mod

        checked = replace(checked, imx500_converter=imx500_mod.find_converter())
    for path, reason in checked.ignored:
        ctx.log.warning(Event.INPUT_IGNORED.value, path=path, reason=reason)
    for image, reason in checked.skipped:
        ctx.log.warning(Event.INPUT_SKIPPED.value, path=str(image), reason=reason)
    return checked


def check(config: Config, config_file: Path) -> Inputs:
    """Check every path, folder and file the configuration (read from ``config_file``) names;
    raise one error listing every problem, or return the discovered inputs."""
    base_dir = config_file.parent
    problems = Problems()
    for key in (*PATH_KEYS, *OPTIONAL_PATH_KEYS):
        if (path := getattr(config, key)) is not None:
            _check_links(key, path, base_dir, problems)
    if problems.config:
        problems.raise_any()
    _check_model_path(config.source_keras_model, problems)
    calibration = _calibration_images(config, problems)
    truth = task_for(config).ground_truth(config, problems)
    calibration, truth, skipped = _unreadable_images(config, calibration, truth, problems)
    if config.quantization_method == "qat" and calibration:
        from . import qat

        if qat.labels_of(config.dataset_image_dir, calibration, getattr(truth, "labels", {})) is None:
            problems.data.append(qat.unlabelled_problem(config))
    for key in ("output_dir", "evaluate_result_dir"):
        _check_writable(key, getattr(config, key), problems)
    problems.raise_any()
    return Inputs(config, config_file, tuple(calibration), truth, tuple(skipped))


def _unreadable_images(
    config: Config,
    calibration: list[Path],
    truth: GroundTruth,
    problems: Problems,
) -> tuple[list[Path], GroundTruth, list[tuple[Path, str]]]:
    """Empty and non-image files, found from their first bytes before any heavy work: an
    error naming them, or (on_corrupt_image: skip) left out and reported."""
    bad = {path: reason for path in [*calibration, *truth.images] if (reason := images.sniff(path)) is not None}
    if not bad:
        return calibration, truth, []
    if config.on_corrupt_image == "fail":
        named = [f"{path} {reason}" for path, reason in bad.items()]
        problems.data.append(
            f"{len(bad)} unreadable image file(s): {listed(named)}; replace or remove them, "
            f'or set "on_corrupt_image": "skip" to leave them out'
        )
        return calibration, truth, []
    calibration = [p for p in calibration if p not in bad]
    truth = truth.without(set(bad))
    if calibration and config.batch_size > len(calibration):
        problems.config.append(
            f"key 'batch_size': {config.batch_size} is more than the {len(calibration)} "
            f"readable images in {config.dataset_image_dir}; accepted: 1 to {len(calibration)}"
        )
    if not calibration or not truth.images:
        which = "dataset_image_dir" if not calibration else "evaluate_image_dir"
        problems.data.append(f"key '{which}': every image there is unreadable; expected JPEG, PNG or BMP files")
    return calibration, truth, [(p, f"{p} {r}") for p, r in bad.items()]


def _check_links(key: str, path: Path, base_dir: Path, problems: Problems) -> None:
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


def _check_model_path(path: Path, problems: Problems) -> None:
    key = "source_keras_model"
    accepted = "a Keras SavedModel folder (with saved_model.pb) or a .h5 / .keras file"
    if not path.exists():
        problems.config.append(missing(key, path, accepted))
    elif path.is_dir() and not (path / "saved_model.pb").is_file():
        problems.data.append(
            f"key '{key}': folder {path} has no saved_model.pb, so it is not a SavedModel; expected {accepted}"
        )
    elif path.is_file() and path.suffix.lower() not in KERAS_FILE_SUFFIXES:
        problems.data.append(f"key '{key}': file {path} is not a .h5 or .keras file; expected {accepted}")


def _calibration_images(config: Config, problems: Problems) -> list[Path]:
    key, root = "dataset_image_dir", config.dataset_image_dir
    what = "a folder of calibration images (jpg, jpeg, png, bmp)"
    if problem := folder_problem(key, root, what):
        problems.config.append(problem)
        return []
    found = images.scan(root, images.CALIBRATION_EXTENSIONS)
    if found.links:
        problems.data.append(
            f"key '{key}': symbolic links are not supported, found {listed(found.links)}; "
            f"replace them with the files themselves"
        )
    if not found.files:
        others = (
            f" (it holds {found.others} other files: {extension_counts(found.other_extensions)})"
            if found.others
            else ""
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


def _check_writable(key: str, path: Path, problems: Problems) -> None:
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
