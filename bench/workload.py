"""The bench's generated workload and the real job run on it.

The demo project (``examples/digits.py``, built if missing) is copied into its own folder
per job run, since a run locks and overwrites its output folders. Copies are hard links
(plain copies across file systems): the job refuses symbolic links. A copy can hold each
validation image several times under distinct names, to scale the evaluation set.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mctq_job.results import Manifest, Results

from .common import ROOT

ENTRY = [sys.executable, str(ROOT / "entrypoint.py")]
DEMO = Path(os.environ.get("DEMO", ROOT / "demo"))

#: Where each input of configuration.json goes inside a project copy.
INPUT_LAYOUT = {
    "dataset_image_dir": "dataset/training",
    "evaluate_image_dir": "dataset/validation",
    "evaluate_label_file": "dataset/labels.json",
}
OUTPUT_LAYOUT = {"output_dir": "output", "evaluate_result_dir": "evaluate/results"}


def ensure_demo() -> Path:
    """The demo project's configuration.json, after building the project if it is missing."""
    if not (DEMO / "configuration.json").exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py"), str(DEMO)], check=True)
    return DEMO / "configuration.json"


@dataclass(frozen=True)
class Project:
    folder: Path

    @property
    def config_file(self) -> Path:
        return self.folder / "configuration.json"

    @property
    def output_dir(self) -> Path:
        return self.folder / OUTPUT_LAYOUT["output_dir"]

    @property
    def result_dir(self) -> Path:
        return self.folder / OUTPUT_LAYOUT["evaluate_result_dir"]


def copy_project(source_config: Path, dest: Path, validation_copies: int = 1) -> Project:
    """A fresh project at ``dest`` with the inputs of ``source_config`` and its own output
    folders; every validation image appears ``validation_copies`` times."""
    document = json.loads(source_config.read_text())
    base = source_config.parent
    if dest.exists():
        shutil.rmtree(dest)
    model = Path(document["source_keras_model"])
    layout = {**INPUT_LAYOUT, "source_keras_model": f"model/{model.name}"}
    for key, relative in layout.items():
        copies = validation_copies if key == "evaluate_image_dir" else 1
        _link_tree(base / document[key], dest / relative, copies)
    document.update({key: f"./{relative}" for key, relative in {**layout, **OUTPUT_LAYOUT}.items()})
    project = Project(dest)
    project.config_file.write_text(json.dumps(document, indent=2) + "\n")
    return project


def _link_tree(source: Path, dest: Path, copies: int) -> None:
    """``source`` (a file or a folder) at ``dest``; each file ``copies`` times, the extra ones
    named ``<stem>-copy<k><suffix>``."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for file in files:
        target = dest if file == source else dest / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            _link(file, target if k == 0 else target.with_name(f"{target.stem}-copy{k}{target.suffix}"))


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(source, target)


@dataclass(frozen=True)
class JobRun:
    """One run of the real job (``entrypoint.py --config``) in a subprocess."""

    project: Project
    wall_s: float
    events: list[dict]
    manifest: Manifest
    results: Results
    returncode: int = 0

    @property
    def max_gap_s(self) -> float:
        stamps = [dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in self.events]
        return round(max((b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)), 2)

    @property
    def stage_seconds(self) -> dict[str, float]:
        return self.manifest.stage_seconds

    @property
    def peak_memory_bytes(self) -> int:
        return self.manifest.peak_memory_bytes


def run_job(project: Project, accepted: tuple[int, ...] = (0,)) -> JobRun:
    """The job on ``project``; the bench stops unless it exits with one of ``accepted``."""
    began = time.perf_counter()
    proc = subprocess.run(
        ENTRY + ["--config", str(project.config_file)], cwd=project.folder, capture_output=True, text=True
    )
    wall = round(time.perf_counter() - began, 2)
    if proc.returncode not in accepted:
        sys.exit(
            f"bench: the job failed on {project.config_file} (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    manifest = Manifest.read(project.output_dir / "manifest.json")
    results = Results.read(project.result_dir / "results.json")
    return JobRun(project, wall, events, manifest, results, proc.returncode)


def median_run(runs: list[JobRun]) -> JobRun:
    """The run of median wall time."""
    return sorted(runs, key=lambda run: run.wall_s)[len(runs) // 2]
