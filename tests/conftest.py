"""Shared fixtures: a small real example project (digits, a trained Keras CNN) built once per
session, fresh copies of it per test, and a runner for the real command line."""

from __future__ import annotations

import faulthandler
import functools
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "entrypoint.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


digits = _load_example()


@dataclass
class JobRun:
    returncode: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.strip()]

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> JobRun:
    """Run ``entrypoint.py`` in a fresh interpreter, as users and the container do. The
    results.json and manifest.json it publishes must fit their published schemas."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    check_published_documents(proc.stdout.splitlines())
    return JobRun(proc.returncode, proc.stdout, proc.stderr, Path(cwd))


#: ``make test-fast`` sets MCTQ_TEST_FAST=1: the tests it selects run without TensorFlow or MCT,
#: in this process and in every process they start. Both packages are shadowed by stubs that
#: refuse to be imported (a folder first on sys.path and on the children's PYTHONPATH), so a
#: test that needs one fails saying so, and the session fails if either got imported anyway.
FAST_ENV = "MCTQ_TEST_FAST"
HEAVY_PACKAGES = ("tensorflow", "model_compression_toolkit")


def pytest_configure(config):
    if os.environ.get(FAST_ENV) != "1":
        return
    import tempfile

    blocked = Path(tempfile.mkdtemp(prefix="mctq-test-fast-"))
    for name in HEAVY_PACKAGES:
        (blocked / name).mkdir()
        message = (
            f"{FAST_ENV}=1 (make test-fast) runs without {name}, yet this test imports it "
            "(here or in a process it started): mark the test slow"
        )
        (blocked / name / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    sys.path.insert(0, str(blocked))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH", "")) if p)
    config.add_cleanup(lambda: shutil.rmtree(blocked, ignore_errors=True))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get(FAST_ENV) != "1":
        return
    loaded = [name for name in HEAVY_PACKAGES if name in sys.modules]
    if loaded:
        print(f"\n{FAST_ENV}=1, yet {loaded} got imported in the test process", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- results.json and manifest.json against their published JSON Schemas --------------------

#: The file each published schema describes: `mctq-job schema --results` / `--manifest`.
SCHEMA_FILES = {"results": "results.json", "manifest": "manifest.json"}


@functools.cache
def _schema_validator(document: str):
    import jsonschema

    from mctq_job import results

    schema = results.json_schema(results.SCHEMAS[document])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_problems(document: str, data: object) -> list[str]:
    """Where ``data`` breaks the JSON Schema the job publishes for ``document`` (a JSON Schema
    validator's verdict, independent of the pydantic models the schema is generated from)."""
    errors = _schema_validator(document).iter_errors(data)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def check_published_documents(lines: list[str], mounts: dict[str, Path] | None = None) -> int:
    """Each results.json and manifest.json that a run's JSON events say it published fits its
    published schema and reads through mctq_job.results' models. ``mounts`` maps a container's
    folder to the host folder mounted there, for runs in a container. Returns how many it checked."""
    from mctq_job import results

    checked = 0
    for line in lines:
        if not line.startswith("{"):
            continue  # console format, or not an event
        event = json.loads(line)
        if event.get("event") != "artifact.written":
            continue
        path = _on_host(event["path"], mounts or {})
        for document, name in SCHEMA_FILES.items():
            if event.get("name") == name and path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                problems = schema_problems(document, data)
                assert not problems, f"{path} breaks the published schema:\n" + "\n".join(problems)
                results.SCHEMAS[document].model_validate(data)
                checked += 1
    return checked


def _on_host(path: str, mounts: dict[str, Path]) -> Path:
    """A path inside a container, where a host folder is mounted, as the host sees it."""
    for target, source in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return Path(source) / Path(path).relative_to(target)
    return Path(path)


#: No single test (with the set-up it triggers, such as an image build) takes this long; one
#: that does is hung: its threads' tracebacks are printed and the run ends, so CI says where.
HUNG_TEST_S = 1800


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    faulthandler.dump_traceback_later(HUNG_TEST_S, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


class LiveRun:
    """The job running in the background, its JSON lines read as they come by a thread, so that
    every wait on it is bounded: a job that hangs fails its test instead of the whole suite."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, deadline: float) -> dict | None:
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"the job printed nothing more in time; last events: {self.events[-3:]}") from None
        if line is None:
            return None
        self.events.append(json.loads(line))
        return self.events[-1]

    def until(self, predicate, timeout: float = 600) -> dict:
        """The first event (from here on) for which ``predicate`` is true."""
        deadline = time.monotonic() + timeout
        while (event := self._next(deadline)) is not None:
            if predicate(event):
                return event
        raise AssertionError(
            f"the job ended (exit {self.proc.wait()}) before the awaited event; last: {self.events[-3:]}"
        )

    def finish(self, timeout: float = 120) -> int:
        """Read to the end and return the exit code; a job still running after ``timeout`` fails.
        The results.json and manifest.json it published must fit their published schemas."""
        deadline = time.monotonic() + timeout
        while self._next(deadline) is not None:
            pass
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        check_published_documents([json.dumps(event) for event in self.events])
        return code

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


def is_stage_start(stage: str):
    return lambda event: event["event"] == "stage.start" and event.get("stage") == stage


@pytest.fixture(scope="session")
def digits_template(tmp_path_factory) -> Path:
    """An AITRIOS-style project: SavedModel, calibration and validation images, labels, config."""
    dest = tmp_path_factory.mktemp("digits-template")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    digits.build(dest, model_format="savedmodel", limit=700, epochs=15, batch_size=16, iteration_count=6)
    return dest


@pytest.fixture
def project(digits_template, tmp_path) -> Path:
    """A private copy of the example project, free to modify."""
    dest = tmp_path / "project"
    shutil.copytree(digits_template, dest)
    return dest


def read_config(project: Path) -> dict:
    return json.loads((project / "configuration.json").read_text())


def write_config(project: Path, config: dict) -> None:
    (project / "configuration.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="session")
def finished_run(digits_template, tmp_path_factory) -> JobRun:
    """One real end-to-end run (TensorFlow + MCT) that many tests inspect."""
    dest = tmp_path_factory.mktemp("finished") / "project"
    shutil.copytree(digits_template, dest)
    termination = dest / "termination-log"
    termination.touch()
    return run_cli(cwd=dest, env={"MCTQ_TERMINATION_LOG": str(termination)})


def miscalibrate(project: Path, images: int = 32) -> None:
    """Replace the calibration images by flat grey ones: calibrated on the wrong data, the
    quantized model loses most of its accuracy (a realistic reason for the gate to fail)."""
    from PIL import Image

    calibration = project / "dataset" / "training"
    for path in [p for p in calibration.rglob("*") if p.is_file()]:
        path.unlink()
    for i in range(images):
        Image.new("RGB", (40, 40), (128, 128, 128)).save(calibration / f"grey{i}.png")


def save_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10), color=None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fill = (
        color
        if color is not None
        else {"RGB": (200, 30, 60), "L": 128, "RGBA": (10, 20, 30, 40), "CMYK": (0, 255, 0, 0), "P": 3}[mode]
    )
    img = Image.new(mode, size, fill)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    img.save(path, format=fmt)
    return path


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    """A project whose files are all real but whose model is only a placeholder
    saved_model.pb: enough for everything ``validate`` checks, without TensorFlow."""
    root = tmp_path / "tiny"
    (root / "model" / "saved_model").mkdir(parents=True)
    (root / "model" / "saved_model" / "saved_model.pb").write_bytes(b"placeholder")
    for i, suffix in enumerate([".png", ".JPG", ".jpeg", ".bmp"]):
        save_image(root / "data" / "train" / f"sub{i % 2}" / f"img{i}{suffix}")
    for cls in ("cat", "dog"):
        for i in range(2):
            save_image(root / "data" / "val" / cls / f"{cls}{i}.jpg")
    (root / "data" / "labels.json").write_text(json.dumps({"cat": 0, "dog": 1}))
    write_config(
        root,
        {
            "source_keras_model": "model/saved_model",
            "dataset_image_dir": "data/train",
            "batch_size": 2,
            "input_tensor_size": 8,
            "iteration_count": 3,
            "output_dir": "out",
            "evaluate_image_dir": "data/val",
            "evaluate_image_extension": "jpg",
            "evaluate_label_file": "data/labels.json",
            "evaluate_result_dir": "res",
        },
    )
    return root


def declare_huge_jpeg(path: Path, side: int = 60_000) -> Path:
    """Rewrite the JPEG at ``path`` to declare ``side`` x ``side`` pixels in its frame header: a
    file PIL refuses with DecompressionBombError (no OSError or ValueError) as it opens it."""
    data = bytearray(path.read_bytes())
    frame = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    data[frame + 5 : frame + 9] = side.to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))
    return path
