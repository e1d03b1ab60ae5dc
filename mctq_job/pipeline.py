"""The job, stage by stage: config -> inputs -> model -> calibrate -> quantize -> export ->
evaluate -> report/artifacts. Each stage returns a value; the report is built from those
values alone. :func:`run` returns a :class:`RunResult` or raises an :class:`MctqError`; it
never prints and never exits (the CLI does both).

TensorFlow and MCT are imported inside the stages, after the first events are out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import resource
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from . import __version__, artifacts
from . import config as config_mod
from . import inputs as inputs_mod
from .artifacts import MANIFEST_FILE, QUANTIZED_FILE, REPORT_FILE, RESULTS_FILE
from .capture import native_output
from .errors import (
    OUTPUT_ERRNOS,
    AccuracyGateError,
    ConfigError,
    Imx500NotFitError,
    InternalError,
    MctqError,
    OutputError,
    ToolkitError,
    calling,
)
from .events import Event
from .logs import Logger
from .progress import Heartbeat, Progress

if TYPE_CHECKING:
    from .imx500 import Converter
    from .results import Manifest, Results

#: The stages of a run, in order: the ``stage`` of every event written inside one. ``imx500``
#: runs only where the configuration asks for the package.
STAGES = ("config", "inputs", "model", "calibrate", "quantize", "export", "imx500", "evaluate", "report")


@dataclass(frozen=True)
class RunResult:
    results: Results
    manifest: Manifest
    published: list[Path]


@dataclass
class _Stages:
    """Times each stage, binds its name into every event, and tells a bug of the job's own
    (exit 1) from the failures the stages already named (toolkit, input, output)."""

    log: Logger
    heartbeat: Heartbeat | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        if self.heartbeat:
            self.heartbeat.enter(name)
        self.log.info(Event.STAGE_START.value, stage=name, **fields)
        began = time.perf_counter()
        summary: dict[str, Any] = {}
        try:
            with structlog.contextvars.bound_contextvars(stage=name), native_output(self.log):
                yield summary
        except MctqError as exc:
            exc.context.setdefault("stage", name)
            raise
        except Exception as exc:
            error = InternalError(exc)
            error.context["stage"] = name
            raise error from exc
        finally:
            if self.heartbeat:
                self.heartbeat.enter(None)
        self.seconds[name] = round(time.perf_counter() - began, 3)
        self.log.info(
            Event.STAGE_FINISH.value,
            stage=name,
            duration_s=self.seconds[name],
            peak_memory_bytes=peak_memory_bytes(),
            **summary,
        )


def peak_memory_bytes() -> int:
    """The process's peak resident memory so far: VmHWM of /proc/self/status. Not ru_maxrss:
    Linux carries the parent's peak into it across fork and exec, so a job started by a
    large process (a notebook, a bench) would report that process's memory as its own."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def validate(config_path: Path, log: Logger) -> inputs_mod.Inputs:
    """Check the configuration and everything it names, without TensorFlow."""
    return _checked_inputs(config_path, _Stages(log), log)


def _checked_inputs(config_path: Path, stages: _Stages, log: Logger) -> inputs_mod.Inputs:
    """Stages ``config`` and ``inputs``: everything that can be known without TensorFlow."""
    with stages("config") as summary:
        config_path = config_mod.locate(config_path).absolute()  # not resolve(): a ConfigMap's file is a link
        config = config_mod.load(config_path)
        summary.update(config_file=str(config_path), config_sha256=config.digest())
    with stages("inputs") as summary:
        checked = inputs_mod.check(config, config_path)
        summary.update(checked.summary())
        if config.imx500 is not None and config.imx500.package:
            converter = _imx500_converter(config)
            summary["imx500_converter"] = {"path": str(converter.path), "version": converter.version}
            checked = replace(checked, imx500_converter=converter)
    for path, reason in checked.ignored:
        log.warning(Event.INPUT_IGNORED.value, path=path, reason=reason)
    for image, reason in checked.skipped:
        log.warning(Event.INPUT_SKIPPED.value, path=str(image), reason=reason)
    return checked


def _imx500_converter(config: config_mod.Config) -> Converter:
    """The IMX500 converter exists, runs, and accepts the configured TPC version."""
    from . import imx500

    converter = imx500.find_converter()
    if config.target_platform_version not in imx500.ACCEPTED_TPC_VERSIONS:
        raise ConfigError(
            f"key 'target_platform_version': the IMX500 converter {converter.version} converts models "
            f"quantized with TPC versions {', '.join(imx500.ACCEPTED_TPC_VERSIONS)}, got "
            f"{config.target_platform_version!r}; accepted: one of those, or imx500.package false",
            key="target_platform_version",
        )
    return converter


def run(config_path: Path, log: Logger, max_top1_drop: float | None = None) -> RunResult:
    """The whole job. ``max_top1_drop`` (the command line's) overrides the configuration's.
    Raises Imx500NotFitError or AccuracyGateError after publishing everything when a gate fails."""
    started_at = _now()
    with Heartbeat(log) as heartbeat:
        stages = _Stages(log, heartbeat)
        checked = _checked_inputs(config_path, stages, log)
        if max_top1_drop is not None:
            checked = replace(checked, config=checked.config.model_copy(update={"max_top1_drop": max_top1_drop}))
        config = checked.config
        _make_folders(config.output_dir, config.evaluate_result_dir)
        with artifacts.locked_folders([config.output_dir, config.evaluate_result_dir]):
            staging = artifacts.Staging(uuid.uuid4().hex[:12])
            try:
                result = _heavy_stages(checked, stages, staging, log, started_at)
            finally:
                if staging.pending:  # not committed: a stage failed
                    staging.abort()
    failed_gate = _failed_gate(checked.config, result.results)
    if failed_gate is not None:
        raise failed_gate
    return result


def _heavy_stages(
    checked: inputs_mod.Inputs, stages: _Stages, staging: artifacts.Staging, log: Logger, started_at: str
) -> RunResult:
    """The stages after the inputs, each handing its value on."""
    from . import calibrate, report
    from . import model as model_mod

    config = checked.config
    with stages("model") as summary:
        loaded = model_mod.load(checked)
        summary.update(loaded.info.summary())
    with stages("calibrate", batches=config.iteration_count, batch_size=config.batch_size) as summary:
        drawn = calibrate.draw(len(checked.calibration_images), config)
        summary.update(drawn.summary())
    with stages("quantize", **config.quantization_settings()) as summary:
        quantized = _quantize(checked, loaded.model, drawn, log)
        summary.update(quantized.summary())
    with stages("export", export_format=config.export_format) as summary, _output_errors(config.output_dir):
        from . import export

        conversion = _start_float_conversion(checked, loaded.info.parameters)
        exported = export.export(
            loaded.model,
            quantized.model,
            config.output_dir,
            staging,
            config.export_format,
            config.quantized_io,
            write=lambda final, data: _write(staging, final, data),
            keras_export=config.target_platform == "imx500",
            float_tflite=conversion and (lambda: _float_bytes(conversion, log)),
            representative_data=_calibration_data(checked, drawn),
        )
        summary.update(exported.summary())
    chip = None
    converter = checked.imx500_converter  # found in the inputs stage where imx500.package is on
    if converter is not None and exported.keras is not None:
        with stages("imx500") as summary, _output_errors(config.output_dir):
            chip = _imx500_package(converter, exported.keras.staged, config.output_dir, staging, log)
            summary.update(chip)
    with stages("evaluate", images=len(checked.samples)) as summary:
        evaluation = _evaluate(checked, loaded.model, quantized.model, exported, log)
        summary.update(evaluation.summary())
    values = report.RunValues(config, checked, loaded.info, drawn, quantized, exported, evaluation, chip)
    with stages("report") as summary:
        result = _report(values, stages, staging, log, started_at)
        summary["artifacts"] = len(result.published)
    return result


def _start_float_conversion(checked: inputs_mod.Inputs, parameters: int) -> Any:
    """model.tflite's conversion in a worker, overlapping the quantized export (both mostly on one
    core), for models large enough to gain and where a second core is there to take it."""
    import tempfile

    from . import float_worker
    from .images import usable_cpus

    if parameters < float_worker.WORKER_MIN_PARAMETERS or usable_cpus() < 2:
        return None
    capture = Path(tempfile.mkdtemp(prefix="float-tflite-")) / "native-output.txt"  # in the run's private temp folder
    return float_worker.FloatConversion(checked.config.source_keras_model, capture)


def _float_bytes(conversion: Any, log: Logger) -> bytes:
    try:
        return conversion.result()
    finally:
        if text := conversion.output():
            log.debug(Event.LIBRARY_LOG.value, logger="native", message=text[:16000], worker="float-tflite")


def _skip_logger(log: Logger, found: list[tuple[Path, str]]) -> Any:
    def skip(path: Path, reason: str) -> None:
        found.append((path, reason))
        log.warning(Event.INPUT_SKIPPED.value, path=str(path), reason=reason)

    return skip


def _calibration_data(checked: inputs_mod.Inputs, drawn: Any, **callbacks: Any) -> Any:
    """MCT's representative dataset: the drawn batches, decoded each time it is read."""
    from . import calibrate

    return calibrate.representative_dataset(checked.calibration_images, drawn.batches, checked.config, **callbacks)


def _quantize(checked: inputs_mod.Inputs, model: Any, drawn: Any, log: Logger) -> Any:
    from . import quantize  # imports MCT

    config = checked.config
    skipped: list[tuple[Path, str]] = []
    progress = Progress(log, "quantize", config.iteration_count, "batch", task="calibration")
    data = _calibration_data(checked, drawn, on_batch=progress.advance, on_skip=_skip_logger(log, skipped))
    with calling("MCT"):
        quantized = quantize.quantize(model, data, config)
    progress.close()
    if quantized.statistics is not None:
        log.info(Event.STATISTICS.value, **quantized.statistics)
    return replace(quantized, skipped_images=tuple(skipped))


def _imx500_package(
    converter: Converter, keras_file: Path, output_dir: Path, staging: artifacts.Staging, log: Logger
) -> dict[str, Any]:
    """Run Sony's converter (found in the inputs stage) on the staged Keras export in a private
    folder; stage its package, parameters and memory report; return the memory facts. Its output
    lines become events."""
    import tempfile

    from . import imx500

    work_dir = Path(tempfile.mkdtemp(prefix="imxconv-"))  # inside the run's private temp folder

    def on_line(line: str) -> None:
        if line.strip():
            log.info(Event.LIBRARY_LOG.value, logger=imx500.EXECUTABLE, message=line.strip())

    try:
        package = imx500.convert(converter, keras_file, work_dir, on_line)
    except imx500.ConverterError as exc:
        raise ToolkitError("IMX500 converter", exc, str(exc)) from exc
    produced = {
        artifacts.PACKAGE_FILE: package.packer_out,  # None where the model does not fit the chip
        artifacts.DNN_PARAMS_FILE: package.dnn_params,
        artifacts.MEMORY_REPORT_FILE: package.memory_report,
    }
    for name, source in produced.items():
        if source is not None:
            _write(staging, output_dir / name, source.read_bytes())
    return package.facts


def _evaluate(checked: inputs_mod.Inputs, model: Any, quantized_model: Any, exported: Any, log: Logger) -> Any:
    from . import evaluate

    progress = Progress(log, "evaluate", len(checked.samples), "image", task="evaluation")
    predictors = evaluate.predictors(
        {"keras": model, "keras_quantized": quantized_model},
        {name: file.staged for name, file in exported.models.items()},
    )
    evaluation = evaluate.evaluate(
        predictors, checked.samples, checked.config, on_images=progress.advance, on_skip=_skip_logger(log, [])
    )
    progress.close()
    return evaluation


def _report(values: Any, stages: _Stages, staging: artifacts.Staging, log: Logger, started_at: str) -> RunResult:
    from . import report, report_html

    config = values.config
    results = report.results(values)
    verdict = results.gate
    if verdict is not None:
        (log.info if verdict.passed else log.error)(Event.ACCURACY_GATE.value, **verdict.document())
    _write(staging, config.evaluate_result_dir / RESULTS_FILE, artifacts.json_bytes(results.document()))
    _write(staging, config.evaluate_result_dir / REPORT_FILE, report_html.render(results).encode())
    failed_gate = _failed_gate(values.config, results)
    outcome = failed_gate.kind if failed_gate else "success"
    manifest = _manifest(values, staging, stages, started_at, outcome)
    _write(staging, config.output_dir / MANIFEST_FILE, artifacts.json_bytes(manifest.document()))
    published = staging.commit()
    for path in published:
        log.info(Event.ARTIFACT_WRITTEN.value, **artifacts.describe(path).record())
    return RunResult(results, manifest, published)


def _failed_gate(config: config_mod.Config, results: Results) -> MctqError | None:
    """The error of a gate the published run failed (the chip's fit first, then accuracy), or None."""
    chip, verdict = results.imx500, results.gate
    if chip and config.imx500 and config.imx500.require_fit and not chip.fit_in_chip:
        return Imx500NotFitError(
            f"the IMX500 converter says the model does not fit the chip: it needs {chip.memory_usage_bytes} bytes "
            f"of {chip.total_memory_bytes}; the memory report, the models and results are written for "
            f"inspection; make the model smaller (e.g. mixed_precision) or set imx500.require_fit false",
            fit_in_chip=False,
            utilization=chip.utilization,
        )
    if verdict and not verdict.passed:
        return AccuracyGateError(
            f"top-1 accuracy dropped by {verdict.top_1_drop:.4f} from the Keras model to {QUANTIZED_FILE}, "
            f"more than max_top1_drop {verdict.max_top1_drop}; the models, results.json and report.html are "
            f"written for inspection",
            **verdict.document(),
        )
    return None


def _manifest(values: Any, staging: artifacts.Staging, stages: _Stages, started_at: str, outcome: str) -> Manifest:
    import numpy
    import tensorflow as tf

    from . import quantize, report

    config = values.config
    records = [staging.staged(final).record() for final in staging.pending]
    versions = {
        "mctq_job": __version__,
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
        **quantize.versions(),
    }
    peak = peak_memory_bytes()
    return report.manifest(
        run_id=staging.run_id,
        started_at=started_at,
        finished_at=_now(),
        config_file=str(values.inputs.config_file),
        config_doc=config.to_document(),
        config_sha256=config.digest(),
        versions=versions,
        stage_seconds=dict(stages.seconds),
        peak_memory_bytes=peak,
        artifacts=records,
        outcome=outcome,
    )


def _make_folders(*folders: Path) -> None:
    for folder in folders:
        with _output_errors(folder):
            artifacts.ensure_folder(folder)


@contextlib.contextmanager
def _output_errors(folder: Path) -> Iterator[None]:
    """A full disk or a read-only folder, wherever it surfaces, becomes an OutputError naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        raise OutputError(
            f"cannot write in {folder}: {exc.strerror}; expected a writable folder with free space", folder=str(folder)
        ) from exc


def _write(staging: artifacts.Staging, final: Path, data: bytes) -> Path:
    with _output_errors(final.parent):
        return staging.write_bytes(final, data)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
