"""What the bench modules share: where things live, the job's inputs read with the job's own
code, the calibration batches and validation pixels the job would use, the job's way of
predicting, and markdown tables.

Nothing here imports TensorFlow at import time: ``irreducible`` times that import itself.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mctq_job.inputs import Inputs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-results"
WORK = OUT / "work"
#: Repetitions of each timed comparison (the median is reported): 2 cores are noisy.
REPEAT = 3

Predictor = Callable[["np.ndarray"], "np.ndarray"]


def module_command(module: str, *args: str) -> list[str]:
    """``python -m bench.NAME ARGS``: a part that measures in a fresh process starts it this
    way (with :func:`child_env`, so the child finds ``bench`` and ``mctq_job`` from any folder)."""
    return [sys.executable, "-m", module, *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a bench child process: this one's, with the repository first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


#: Seconds between two samples of a process tree's memory.
SAMPLE_EVERY_S = 0.2


def parent_pids() -> dict[int, int]:
    """Every live process's parent, from /proc/PID/stat (the field after the command's ')')."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while we read
            continue
    return parents


def process_tree(root: int) -> set[int]:
    """``root`` and all its live descendants (a worker's own workers too)."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_pids().items():
        children.setdefault(parent, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and its descendants, summed (resident pages of /proc/PID/statm)."""
    pages = 0
    for pid in process_tree(root):
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class SampledRun:
    """A finished subprocess: exit code, its output, wall seconds, peak summed RSS of its tree."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_tree_bytes: int


def run_sampled(
    args: Sequence[str], cwd: Path | None = None, log: Path | None = None, env: dict[str, str] | None = None
) -> SampledRun:
    """Run ``args`` to the end while sampling its process tree's memory every SAMPLE_EVERY_S.
    Output goes through files (``log`` stem), so a chatty process never blocks on a pipe."""
    log = log or WORK / "sampled"
    out_file, err_file = log.with_suffix(".stdout"), log.with_suffix(".stderr")
    log.parent.mkdir(parents=True, exist_ok=True)
    peak, began = 0, time.perf_counter()
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        while True:
            peak = max(peak, tree_rss_bytes(proc.pid))
            try:
                proc.wait(SAMPLE_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                continue
    wall = round(time.perf_counter() - began, 2)
    return SampledRun(proc.returncode, out_file.read_text(), err_file.read_text(), wall, peak)


def load_inputs(config_file: Path) -> Inputs:
    """The checked inputs of ``config_file``, exactly as the job's ``inputs`` stage finds them."""
    from mctq_job import config, inputs

    path = config_file.absolute()
    return inputs.check(config.load(path), path)


def calibration_batches(checked: Inputs) -> list[np.ndarray]:
    """The job's calibration batches (same seeded draw, same preprocessing), decoded up front."""
    from mctq_job import calibrate, images

    cfg = checked.config
    draws = calibrate.draw_batches(len(checked.calibration_images), cfg.batch_size, cfg.iteration_count, cfg.seed)
    return [
        images.load_batch(
            [checked.calibration_images[i] for i in draw], cfg.input_tensor_size, cfg.preprocessing
        ).pixels
        for draw in draws
    ]


def validation_paths(checked: Inputs) -> list[Path]:
    return [sample.path for sample in checked.truth.samples]


def validation_labels(checked: Inputs) -> np.ndarray:
    import numpy as np

    return np.asarray([sample.label for sample in checked.truth.samples], dtype=np.int64)


def validation_pixels(checked: Inputs) -> np.ndarray:
    """Every validation image preprocessed into one float32 array, decoded on every core."""
    from concurrent.futures import ThreadPoolExecutor

    from mctq_job import images

    cfg = checked.config
    with ThreadPoolExecutor(max_workers=images.usable_cpus()) as pool:
        return images.load_batch(validation_paths(checked), cfg.input_tensor_size, cfg.preprocessing, pool).pixels


def batched_predictions(predictors: dict[str, Predictor], checked: Inputs) -> dict[str, np.ndarray]:
    """Top-1 class of every validation image for each model, the job's way: each image decoded
    once (the next batch on every core while the current one runs), batches of the job's size."""
    import numpy as np

    from mctq_job import images
    from mctq_job.evaluate import EVAL_BATCH_SIZE

    cfg = checked.config
    predicted: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    for _, batch in images.iter_batches(
        validation_paths(checked), EVAL_BATCH_SIZE, cfg.input_tensor_size, cfg.preprocessing
    ):
        for name, predict in predictors.items():
            predicted[name].append(np.argmax(predict(batch.pixels), axis=-1))
    return {name: np.concatenate(chunks) for name, chunks in predicted.items()}


def top1(predicted: np.ndarray, labels: np.ndarray) -> float:
    return round(float((predicted == labels).mean()), 4)


def timed(work: Callable[..., Any], *args: Any, repeat: int = REPEAT) -> tuple[float, Any]:
    """(median seconds, last result) of ``repeat`` calls of ``work(*args)``."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = work(*args)
        seconds.append(time.perf_counter() - began)
    return median(seconds), result


def median(samples: Iterable[float]) -> float:
    return round(statistics.median(samples), 3)


def load_average() -> float:
    """The machine's 1-minute load average: the bench shares 2 cores with other people's work."""
    return round(os.getloadavg()[0], 2)


def ratio(numerator: float, denominator: float, digits: int = 2) -> float:
    return round(numerator / denominator, digits)


def mb(n_bytes: int) -> int:
    return round(n_bytes / 2**20)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)
