"""Sony's IMX500 converter (``imxconv-tf``): find it, run it on MCT's Keras export (made by
:func:`mctq_job.export.keras_export_model`) as a killable subprocess, and read the packaged
model's memory report.

The converter lives in its own venv (``make imx500-venv``) or in the ``mctq-job:imx500`` image,
never in the job's venv: it pins its own TensorFlow and mct-quantizers, and Sony's licence
allows its use but not its redistribution. So it is only ever run as a separate process, and
nothing here imports TensorFlow or MCT at import time.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import DNN_PARAMS_FILE, PACKAGE_FILE
from .cleanups import Cleanups
from .errors import ConfigError

#: Environment variable naming the converter's executable; the mctq-job:imx500 image sets it.
ENV = "MCTQ_IMXCONV"
EXECUTABLE = "imxconv-tf"
CONFIG_KEY = "imx500.package"

#: ``--version`` starts Python and reads package metadata only: seconds, even on a busy machine.
VERSION_TIMEOUT_S = 60.0
#: Between SIGTERM and SIGKILL of the converter's process group.
KILL_GRACE_S = 3.0
#: Lines of converter output kept for a ConverterError's message.
TAIL_LINES = 20

#: The converter names its memory report after the model; its other outputs have fixed names
#: (artifacts.PACKAGE_FILE, artifacts.DNN_PARAMS_FILE), which the job publishes unchanged.
REPORT_SUFFIX = "_MemoryReport.json"
OUTPUT_FOLDER = "imxconv-output"
TEMP_FOLDER = "imxconv-tmp"

_HOW_TO_GET = (
    f"build its venv with `make imx500-venv` and set {ENV}=.venv-imx500/bin/{EXECUTABLE}, "
    f"or run the mctq-job:imx500 image (`make image-imx500`); the default image and venv do "
    f"not contain it because Sony's licence allows its use but not its redistribution"
)


@dataclass(frozen=True)
class Converter:
    path: Path
    version: str


@dataclass(frozen=True)
class Package:
    """What a conversion left. A model that does not fit in the chip's memory gets only its
    memory report: the converter then exits 1 without packerOut.zip and dnnParams.xml."""

    packer_out: Path | None  # packerOut.zip: what goes onto the IMX500; None when it does not fit
    dnn_params: Path | None  # dnnParams.xml; None when it does not fit
    memory_report: Path  # <model name>_MemoryReport.json
    facts: dict[str, Any]  # memory_facts() of that report

    @property
    def fits(self) -> bool:
        return bool(self.facts["fit_in_chip"])


class ConverterError(Exception):
    """The converter exited non-zero (or produced no package); carries its exit code and the
    last lines it printed, which say why."""

    def __init__(self, message: str, *, returncode: int | None, tail: list[str]):
        super().__init__(message)
        self.returncode = returncode
        self.tail = list(tail)


class ModelRefused(ConverterError):
    """The converter refused the model itself (its front end's ``[USOP]``, ``[INVOP]`` or
    ``[INVMOD]`` error): converting it again cannot help, the model must change.

    ``code`` is the converter's message code, ``refused`` what it names (the operators, or
    each refused node as ``operator (node): reason``), ``hints`` what the job knows to use
    instead for the refusals it recognizes (:data:`KNOWN_REFUSALS`)."""

    def __init__(
        self, message: str, *, returncode: int | None, tail: list[str], code: str, refused: list[str], hints: list[str]
    ):
        super().__init__(message, returncode=returncode, tail=tail)
        self.code = code
        self.refused = list(refused)
        self.hints = list(hints)


# ---------------------------------------------------------------------------------------
# Finding the converter


def find_converter(environ: Mapping[str, str] | None = None) -> Converter:
    """The converter named by MCTQ_IMXCONV, else ``imxconv-tf`` on PATH, checked to run.

    Raises ConfigError (key ``imx500.package``) when it is missing or does not answer."""
    env = os.environ if environ is None else environ
    path = _locate(env)
    return Converter(path=path, version=_probe_version(path, env))


def _locate(env: Mapping[str, str]) -> Path:
    named = env.get(ENV, "").strip()
    if named:
        path = Path(named).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path.absolute()
        raise _config_error(f"{ENV}={named} is not an executable file")
    found = shutil.which(EXECUTABLE, path=env.get("PATH", os.defpath))
    if found is None:
        raise _config_error(f"{ENV} is not set and {EXECUTABLE} is not on PATH")
    return Path(found).absolute()


def _probe_version(path: Path, env: Mapping[str, str]) -> str:
    """``imxconv-tf --version`` prints e.g. ``imxconv-tf 3.19.2``."""
    try:
        probe = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_TIMEOUT_S,
            env=_child_env(env),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise _config_error(f"{path} --version did not answer within {VERSION_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise _config_error(f"{path} cannot be started: {exc.strerror or exc}") from None
    output = (probe.stdout + probe.stderr).strip()
    match = re.search(r"\b(\d+\.\d+(?:\.\d+)*)\b", output)
    if probe.returncode != 0 or match is None:
        last = output.splitlines()[-1] if output else "no output"
        raise _config_error(f"{path} --version failed (exit {probe.returncode}): {last}")
    return match.group(1)


def _config_error(problem: str) -> ConfigError:
    return ConfigError(f"{CONFIG_KEY}: the IMX500 converter is needed but {problem}; {_HOW_TO_GET}", key=CONFIG_KEY)


def _child_env(env: Mapping[str, str], temp_dir: Path | None = None) -> dict[str, str]:
    """The converter's environment: its own venv's packages only (no PYTHONPATH/PYTHONHOME
    leaking the job's TensorFlow in), unbuffered so lines arrive as they are printed."""
    child = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    child.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=child.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if temp_dir is not None:
        # Python's temp files and JNA's native-library cache go into the run's own folder, so
        # they are removed with it and a read-only HOME never matters.
        child.update(TMPDIR=str(temp_dir), XDG_CACHE_HOME=str(temp_dir / "cache"))
    return child


# ---------------------------------------------------------------------------------------
# Conversion


def convert(
    converter: Converter, keras_file: Path, work_dir: Path, on_line: Callable[[str], None], cleanups: Cleanups
) -> Package:
    """Run the converter on ``keras_file``; its outputs go to ``work_dir/imxconv-output``, its
    temporary files to ``work_dir/imxconv-tmp``. Every output line is passed to ``on_line``.
    While it runs, stopping its whole process group is registered in ``cleanups``.

    A model too large for the chip is not an error here: the Package's facts say
    ``fit_in_chip: False`` and it has no packerOut.zip (the caller decides, e.g. require_fit).
    Raises ConverterError when the converter fails for any other reason."""
    output_dir = work_dir / OUTPUT_FOLDER
    temp_dir = _private_temp_dir(work_dir)
    command = [
        str(converter.path),
        "--input-path",
        str(Path(keras_file).absolute()),
        "--output-dir",
        str(output_dir.absolute()),
        "--overwrite-output",
        "--report-size-unit",
        "B",
    ]
    refusal = _Refusal()

    def read(line: str) -> None:
        refusal.feed(line)
        on_line(line)

    returncode, tail = _run_streaming(command, _child_env(os.environ, temp_dir), read, cleanups)
    report_file = _memory_report_file(output_dir)
    facts = memory_facts(_read_json(report_file), converter.version) if report_file else None
    refused_as_too_large = facts is not None and not facts["fit_in_chip"]
    if returncode != 0 and refusal.code is not None:
        raise refusal.error(converter, returncode, tail)
    if returncode != 0 and not refused_as_too_large:
        raise ConverterError(
            _failure_message(converter, f"exited with code {returncode}", tail), returncode=returncode, tail=tail
        )
    return _collect_package(converter, output_dir, report_file, facts, tail)


# ---------------------------------------------------------------------------------------
# A model the converter refuses

#: The message codes of the converter's front end (3.19.2) for a model it refuses as such,
#: and what each means; its log lines read ``<time> ERROR : CODE: [USOP] <message> [<file>:<line>]``.
REFUSAL_CODES = {
    "USOP": "operators it does not support",
    "INVOP": "operators in a configuration it does not support",
    "INVMOD": "a model input it does not support",
}

#: Refusals the job recognizes, both in the converter's words and in a Keras model before any
#: work (:func:`expected_refusals`): (what the converter names, how a Keras model holds it,
#: what to use instead). Measured with imxconv-tf 3.19.2 on small detectors (docs/imx500.md).
KNOWN_REFUSALS = (
    (
        "TFOpLambda::math.exp",
        "tf.exp / tf.math.exp in the model's graph (a TFOpLambda layer)",
        "decode boxes with operators the chip has (sigmoid, multiply, add: the YOLOv5 style) or inside "
        "edgemdt_cl's SSDPostProcess, whose own exp the converter takes",
    ),
    (
        "new axis is not supported",
        "a slicing that adds an axis, such as boxes[:, :, None, :] (a SlicingOpLambda layer with None)",
        "tf.expand_dims(boxes, 2)",
    ),
)

_CODE = re.compile(r"CODE: \[(" + "|".join(REFUSAL_CODES) + r")\]\s*(.*)$")
_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")  # a new log record begins
_SOURCE = re.compile(r"\s*\[[^\[\]]+\.py:\d+\]\s*$")  # the text formatter's "[file.py:line]"
#: e.g. ``Node [Framework.tensorflow] op: keras.src.layers.core.tf_op_layer.SlicingOpLambda, id: tf.__operators__.getitem, errors:``
_NODE = re.compile(r"^Node (?:\[[^\]]*\] )?op: (?:[\w.]+\.)?([^,.]+), id: ([^,]+)")
#: Lines kept of one refusal message (INVOP lists every refused node, one or two lines each).
REFUSAL_LINES = 200


class _Refusal:
    """Reads the converter's output as it streams: the first refusal message (it may span
    several lines, up to the next log record) and its code."""

    def __init__(self) -> None:
        self.code: str | None = None
        self.lines: list[str] = []
        self._open = False

    def feed(self, line: str) -> None:
        if self._open and (_RECORD.match(line) or len(self.lines) >= REFUSAL_LINES):
            self._open = False
        if self._open:
            self.lines.append(_SOURCE.sub("", line).strip())
            return
        match = _CODE.search(line)
        if match and self.code is None:
            self.code, self._open = match.group(1), True
            self.lines = [_SOURCE.sub("", match.group(2)).strip()]

    def refused(self) -> list[str]:
        """What the message names: the operators ([USOP]), each node with its reasons ([INVOP]),
        the reason ([INVMOD])."""
        text = [line for line in self.lines if line and not set(line) <= {"-"}]
        if self.code == "USOP" and text and ":" in text[0]:
            return [op.strip() for op in text[0].split(":", 1)[1].split(",") if op.strip()]
        if self.code == "INVOP":
            nodes: list[str] = []
            for line in text[1:]:
                node = _NODE.match(line)
                if node:
                    nodes.append(f"{node.group(1).strip()} ({node.group(2).strip()})")
                elif nodes:
                    reason = line.split("reason:", 1)[-1].strip()
                    nodes[-1] += f"{': ' if nodes[-1].endswith(')') else '; '}{reason}"
            return nodes or text[1:] or text
        return text

    def error(self, converter: Converter, returncode: int, tail: list[str]) -> ModelRefused:
        assert self.code is not None
        refused = self.refused()
        said = " ".join(self.lines)
        hints = [f"for {keras}: {instead}" for named, keras, instead in KNOWN_REFUSALS if named in said]
        accepted = "; ".join(hints) if hints else "the operators and configurations Sony's converter documents"
        message = (
            f"key '{CONFIG_KEY}': Sony's IMX500 converter {converter.path.name} {converter.version} refuses the "
            f"model ([{self.code}] {REFUSAL_CODES[self.code]}): {'; '.join(refused) or said}; accepted instead: "
            f"{accepted} (or {CONFIG_KEY} off)"
        )
        return ModelRefused(message, returncode=returncode, tail=tail, code=self.code, refused=refused, hints=hints)


def expected_refusals(model: Any) -> list[dict[str, str]]:
    """Where a Keras model holds an operator the converter is known to refuse
    (:data:`KNOWN_REFUSALS`): one ``{"layer", "operator", "instead"}`` per layer. The layers of
    edgemdt_cl's post-processing are not looked into: the converter takes them whole. Reads
    the layers' configurations only: imports nothing heavy."""
    from .tasks.detection import all_layers  # SSDPostProcess is one layer with no layers of its own

    (exp_named, _, exp_instead), (_, _, axis_instead) = KNOWN_REFUSALS
    found = []
    for layer in all_layers(model):
        kind = type(layer).__name__
        if kind == "TFOpLambda" and layer.get_config().get("function") in ("math.exp", "exp"):
            found.append({"layer": layer.name, "operator": exp_named, "instead": exp_instead})
        elif kind == "SlicingOpLambda" and any(_adds_an_axis(node) for node in layer.inbound_nodes):
            found.append({"layer": layer.name, "operator": "SlicingOpLambda with a new axis", "instead": axis_instead})
    return found


def _adds_an_axis(node: Any) -> bool:
    """A ``x[...]`` whose slice holds None (``tf.newaxis``): Keras keeps the slice as the second
    positional argument when built, as ``slice_spec`` once reloaded."""
    args = tuple(getattr(node, "call_args", ()) or ())
    spec = args[1] if len(args) > 1 else (getattr(node, "call_kwargs", None) or {}).get("slice_spec", ())
    if spec is None:
        return True
    return isinstance(spec, (list, tuple)) and any(part is None for part in spec)


def _private_temp_dir(work_dir: Path) -> Path | None:
    """A temp folder inside ``work_dir``; None (the system's) when its path holds characters a
    shell would split on, since the converter hands its temp paths to ``sh -c`` unquoted."""
    temp_dir = (work_dir / TEMP_FOLDER).absolute()
    if not re.fullmatch(r"[\w./+@:,=-]+", str(temp_dir)):
        return None
    (temp_dir / "cache").mkdir(parents=True, exist_ok=True)
    return temp_dir


def _failure_message(converter: Converter, what: str, tail: list[str]) -> str:
    meaningful = [line for line in tail if re.search(r"error|fail|exception", line, re.IGNORECASE)]
    quote = (meaningful or tail or ["no output"])[-1].strip()
    return f"IMX500 converter {converter.path.name} {converter.version} {what}: {quote}"


def _memory_report_file(output_dir: Path) -> Path | None:
    reports = sorted(output_dir.glob(f"*{REPORT_SUFFIX}"))
    return reports[0] if reports else None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _collect_package(
    converter: Converter, output_dir: Path, report_file: Path | None, facts: dict[str, Any] | None, tail: list[str]
) -> Package:
    """The package's files; packerOut.zip and dnnParams.xml must exist for a model that fits."""
    if report_file is None or facts is None:
        raise ConverterError(_failure_message(converter, f"wrote no *{REPORT_SUFFIX}", tail), returncode=0, tail=tail)
    packer_out, dnn_params = output_dir / PACKAGE_FILE, output_dir / DNN_PARAMS_FILE
    missing = [p.name for p in (packer_out, dnn_params) if not p.is_file()]
    if facts["fit_in_chip"] and missing:
        raise ConverterError(
            _failure_message(converter, f"wrote no {', '.join(missing)}", tail), returncode=0, tail=tail
        )
    return Package(
        packer_out=packer_out if packer_out.is_file() else None,
        dnn_params=dnn_params if dnn_params.is_file() else None,
        memory_report=report_file,
        facts=facts,
    )


# ---------------------------------------------------------------------------------------
# The running converter: streamed, registered, and killable as a whole process group


def _run_streaming(
    command: list[str], env: dict[str, str], on_line: Callable[[str], None], cleanups: Cleanups
) -> tuple[int, list[str]]:
    """Run ``command`` in a new session (its own process group: the converter starts a shell,
    Java and more Python below it), with :func:`terminate` registered in ``cleanups`` while it
    runs; return its exit code and last output lines."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    )
    output = process.stdout
    assert output is not None  # stdout=PIPE
    unregister = cleanups.add(lambda: terminate(process))
    try:
        for raw in output:
            line = raw.rstrip("\r\n")
            tail.append(line)
            on_line(line)
        return process.wait(), list(tail)
    finally:
        # Also on an exception in on_line or an interruption: no converter outlives its caller.
        _stop_group(process)
        unregister()
        output.close()


def terminate(process: subprocess.Popen) -> None:
    """Stop a converter with all of its children: SIGTERM to its process group, SIGKILL to
    what is left after KILL_GRACE_S. Safe from any thread."""
    _signal_group(process.pid, signal.SIGTERM)
    _wait_group_gone(process, time.monotonic() + KILL_GRACE_S)
    _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process's group and reap the leader."""
    if _signal_group(process.pid, signal.SIGKILL):
        _wait_group_gone(process, time.monotonic() + KILL_GRACE_S)
    try:
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass


def _wait_group_gone(process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, so a zombie leader does not count as alive
        if not _signal_group(process.pid, 0):
            return
        time.sleep(0.05)


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------
# The memory report

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?B)\s*$", re.IGNORECASE)
_UNIT_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def size_bytes(text: str) -> int:
    """A reported size in bytes: ``"96256B"`` (``--report-size-unit B``) or ``"94.00KB"``
    (the converter's default, powers of 1024)."""
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"not a memory size: {text!r}")
    return round(float(match.group(1)) * _UNIT_BYTES[match.group(2).upper()])


def memory_facts(report: dict, converter_version: str) -> dict[str, Any]:
    """What results.json says about the package, from the converter's memory report.

    Memory usage is runtime (activations) + model (weights and program) + reserved memory;
    the utilization is computed from the byte counts, not the report's rounded percentage."""
    section = report.get("Memory Report", report)
    usage = size_bytes(section["Memory Usage"])
    total = size_bytes(section["Total Memory Available On Chip"])
    return {
        "converter_version": converter_version,
        "fit_in_chip": bool(section["Fit In Chip"]),
        "memory_usage": section["Memory Usage"],
        "memory_usage_bytes": usage,
        "model_memory_bytes": size_bytes(section["Model Memory Physical Size"]),
        "runtime_memory_bytes": size_bytes(section["Runtime Memory Physical Size"]),
        "reserved_memory_bytes": size_bytes(section.get("Reserved Memory", "0B")),
        "total_memory_bytes": total,
        "utilization": usage / total if total else None,
    }
