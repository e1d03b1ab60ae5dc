"""Stage ``artifacts``: files appear under their final names only when complete.

Every artifact is first written to a temporary name in its final folder (same file system,
so the rename is atomic), flushed to disk, and published by :meth:`Staging.commit` after the
whole run succeeded: models, then results.json, then manifest.json last. An interrupted or
failed run removes its temporary files and leaves the previous artifacts untouched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputLockedError

#: The artifacts' file names: in output_dir, then in evaluate_result_dir.
MODEL_FILE = "model.tflite"
QUANTIZED_FILE = "model_quantized.tflite"
MANIFEST_FILE = "manifest.json"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
KERAS_FILE = "model_quantized.keras"  # imx500 target: MCT's Keras export, the converter's input
PACKAGE_FILE = "packerOut.zip"  # imx500.package: what goes onto the sensor
DNN_PARAMS_FILE = "dnnParams.xml"
MEMORY_REPORT_FILE = "imx500_MemoryReport.json"  # the converter's memory report, under a fixed name
IMX500_FILES = (PACKAGE_FILE, DNN_PARAMS_FILE, MEMORY_REPORT_FILE)
FLOAT16_FILE = "model_float16.tflite"  # extra_exports "float16": float16 weights
DYNAMIC_RANGE_FILE = "model_dynamic_range.tflite"  # extra_exports "dynamic_range": int8 weights, float activations
#: recover: the configuration of the published attempt (the user's plus the winner's settings)
RECOVERED_CONFIG_FILE = "recovered_configuration.json"
#: The accepted values of configuration.json's extra_exports, each with the file it adds to output_dir.
EXTRA_EXPORT_FILES = {"float16": FLOAT16_FILE, "dynamic_range": DYNAMIC_RANGE_FILE}


def output_dir_files(
    target_platform: str = "imx500",
    imx500_package: bool = False,
    fits: bool = True,
    extra_exports: Iterable[str] = (),
) -> tuple[str, ...]:
    """The files a run publishes in output_dir, for these settings. The converter makes no
    package (only its memory report) for a model that does not fit the chip."""
    keras = (KERAS_FILE,) if target_platform == "imx500" else ()
    package = (IMX500_FILES if fits else (MEMORY_REPORT_FILE,)) if imx500_package else ()
    extra = tuple(EXTRA_EXPORT_FILES[name] for name in extra_exports)
    return (MODEL_FILE, QUANTIZED_FILE, *extra, *keras, *package, MANIFEST_FILE)


RESULT_DIR_FILES = (RESULTS_FILE, REPORT_FILE)
#: Every artifact of a run with the default settings (imx500 target, no package).
OUTPUT_DIR_FILES = output_dir_files()
ARTIFACT_NAMES = OUTPUT_DIR_FILES + RESULT_DIR_FILES


@dataclass(frozen=True)
class Artifact:
    path: Path
    size: int
    sha256: str

    def record(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.path.name, "size": self.size, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: Path) -> Artifact:
    return Artifact(path, path.stat().st_size, sha256_file(path))


def json_bytes(document: Any) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def ensure_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def locked_folders(folders: Iterable[Path]) -> Iterator[None]:
    """Hold an exclusive lock on each output folder for the whole run, so two runs pointed at
    the same folder cannot interleave their files: the second one stops before any work.

    The lock is flock(2) on the folder itself (no lock file is left behind); it is released by
    the kernel when the process ends, however it ends. File systems without flock support
    run unlocked."""
    fds = []
    try:
        for folder in sorted({Path(f).absolute() for f in folders}):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputLockedError(
                    f"another mctq-job run is writing to {folder}; wait for it to finish or "
                    f"give this run its own output_dir / evaluate_result_dir",
                    folder=str(folder),
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        yield
    finally:
        for fd in fds:
            os.close(fd)


class Staging:
    """Temporary files of one run, published together or removed together. The run's context
    registers :meth:`abort` as a clean-up, so an interruption removes them too."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending: dict[Path, Path] = {}  # final -> temporary, in publication order
        self.aborted = False
        # Temporary paths already aborted: a library still writing when a signal aborted the run
        # (MCT's exporter) can create one after the abort; a second abort() removes those again.
        self._aborted_temps: list[Path] = []
        self._lock = threading.RLock()  # held while committing or aborting, so the two never interleave

    def temp_path(self, final: Path) -> Path:
        """A temporary name beside ``final`` that keeps its suffix (tools check extensions)."""
        with self._lock:
            if self.aborted:
                raise RuntimeError("staging was aborted")
            temp = final.with_name(f".{final.stem}.{self.run_id}.tmp{final.suffix}")
            self.pending[final] = temp
            return temp

    def write_bytes(self, final: Path, data: bytes) -> Path:
        temp = self.temp_path(final)
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return temp

    def staged(self, final: Path) -> Artifact:
        """Size and digest of a staged file, reported under its final name."""
        temp = self.pending[final]
        return Artifact(final, temp.stat().st_size, sha256_file(temp))

    def commit(self) -> list[Path]:
        with self._lock:
            if self.aborted:
                raise RuntimeError("staging was aborted")
            for final, temp in list(self.pending.items()):
                if temp.exists():  # a tool may have fsynced nothing: make sure the bytes are on disk
                    _fsync_file(temp)
                os.replace(temp, final)
            for folder in {final.parent for final in self.pending}:
                _fsync_dir(folder)
            published = list(self.pending)
            self.pending.clear()
            return published

    def adopt(self, other: Staging) -> None:
        """Stage ``other``'s files here instead of this area's own (a recovery attempt's winner,
        staged in the same folders): each is renamed onto this area's temporary name for its
        final name, a file staged here that ``other`` lacks is removed, and ``other`` ends empty."""
        with self._lock, other._lock:
            if self.aborted or other.aborted:
                raise RuntimeError("staging was aborted")
            for final in [final for final in self.pending if final not in other.pending]:
                self.pending.pop(final).unlink(missing_ok=True)
            for final, temp in list(other.pending.items()):
                if temp.exists():
                    os.replace(temp, self.temp_path(final))
                del other.pending[final]

    def abort(self) -> list[Path]:
        """Remove every temporary file, also those of an earlier abort that a still-running
        writer created again; returns what it removed. Safe from any thread, any number of times."""
        with self._lock:
            self.aborted = True
            self._aborted_temps.extend(self.pending.values())
            self.pending.clear()
            removed = []
            for temp in self._aborted_temps:
                try:
                    temp.unlink()
                    removed.append(temp)
                except FileNotFoundError:
                    pass
            return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is still atomic
