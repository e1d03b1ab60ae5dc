"""The job, stage by stage: config -> inputs -> calibrate -> quantize -> export -> evaluate
-> report/artifacts. It returns a :class:`RunResult` or raises an :class:`MctqError`; it never
prints and never exits (the CLI does both).

TensorFlow and MCT are imported inside :func:`run`, after the first events are out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import resource
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import structlog

from . import __version__, artifacts, config as config_mod, inputs as inputs_mod
from .errors import AccuracyGateError, MctqError, OutputError, StageError
from .events import Event, native_output
from .progress import Heartbeat, Progress

MODEL_FILE = "model.tflite"
QUANTIZED_FILE = "model_quantized.tflite"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
MANIFEST_FILE = "manifest.json"
#: Every artifact of a successful run: in output_dir, then in evaluate_result_dir.
OUTPUT_DIR_FILES = (MODEL_FILE, QUANTIZED_FILE, MANIFEST_FILE)
RESULT_DIR_FILES = (RESULTS_FILE, REPORT_FILE)
ARTIFACT_NAMES = OUTPUT_DIR_FILES + RESULT_DIR_FILES
#: OSError numbers that mean "this output location cannot take the file".
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


@dataclass
class RunResult:
    results: dict[str, Any]
    manifest: dict[str, Any]
    published: list[Path]


@dataclass
class _Stages:
    """Times each stage, binds its name into every event, wraps library failures."""

    log: Any
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
            raise StageError(name, exc) from exc
        finally:
            if self.heartbeat:
                self.heartbeat.enter(None)
        self.seconds[name] = round(time.perf_counter() - began, 3)
        self.log.info(Event.STAGE_FINISH.value, stage=name, duration_s=self.seconds[name], **summary)


def validate(config_path: Path, log: Any) -> inputs_mod.Inputs:
    """Check the configuration and everything it names, without TensorFlow."""
    return _checked_inputs(config_path, _Stages(log), log)


def _checked_inputs(config_path: Path, stages: _Stages, log: Any) -> inputs_mod.Inputs:
    """Stages ``config`` and ``inputs``: everything that can be known without TensorFlow."""
    with stages("config") as summary:
        config_path = _located(config_path)
        config = config_mod.load(config_path)
        summary.update(config_file=str(config_path), config_sha256=config.digest())
    with stages("inputs") as summary:
        checked = inputs_mod.check(config, config_path)
        summary.update(checked.summary())
    _log_ignored(log, checked)
    return checked


def _located(config_path: Path) -> Path:
    """The file to read (``{index}`` filled in), absolute; not resolve(): a ConfigMap's file is a link."""
    return config_mod.locate(config_path).absolute()


def _log_ignored(log: Any, checked: inputs_mod.Inputs) -> None:
    for path, reason in checked.ignored:
        log.warning(Event.INPUT_IGNORED.value, path=path, reason=reason)
    for path, reason in checked.skipped:
        log.warning(Event.INPUT_SKIPPED.value, path=str(path), reason=reason)


def run(config_path: Path, log: Any, max_top1_drop: float | None = None) -> RunResult:
    """The whole job. ``max_top1_drop`` (the command line's) overrides the configuration's.
    Raises AccuracyGateError after publishing everything when the gate fails."""
    started_at = _now()
    with Heartbeat(log) as heartbeat:
        stages = _Stages(log, heartbeat)
        checked = _checked_inputs(config_path, stages, log)
        config = checked.config
        if max_top1_drop is not None:
            config = config.model_copy(update={"max_top1_drop": max_top1_drop})
        _make_folders(config.output_dir, config.evaluate_result_dir)
        with artifacts.locked_folders([config.output_dir, config.evaluate_result_dir]):
            job = _Job(config, checked.config_file, checked, stages, artifacts.Staging(uuid.uuid4().hex[:12]), log)
            try:
                return job.run(started_at)
            finally:
                if job.staging.pending:  # not committed: a stage failed
                    job.staging.abort()


@dataclass
class _Job:
    """The heavy stages of one run, sharing the checked inputs and the staging area."""

    config: config_mod.Config
    config_path: Path
    checked: inputs_mod.Inputs
    stages: _Stages
    staging: artifacts.Staging
    log: Any
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    distinct_drawn: int = 0  # different calibration images in the drawn batches
    parameters: int = 0      # of the Keras model
    latencies: dict[str, dict[str, Any]] = field(default_factory=dict)
    resource_utilization: dict[str, Any] = field(default_factory=dict)

    def run(self, started_at: str) -> RunResult:
        model = self.load_model()
        batches = self.calibrate()
        quantized = self.quantize(model, batches)
        model_file, quantized_file = self.export(model, quantized)
        evaluation = self.evaluate(model, quantized, model_file, quantized_file)
        result = self.report(evaluation, started_at)
        verdict = result.results.get("gate")
        if verdict and not verdict["passed"]:
            raise AccuracyGateError(
                f"top-1 accuracy dropped by {verdict['top_1_drop']:.4f} from the Keras model to "
                f"{QUANTIZED_FILE}, more than max_top1_drop {verdict['max_top1_drop']}; the models, "
                f"results.json and report.html are written for inspection", **verdict)
        return result

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append((path, reason))
        self.log.warning(Event.INPUT_SKIPPED.value, path=str(path), reason=reason)

    def load_model(self):
        with self.stages("model") as summary:
            _seed_everything(self.config.seed)
            model, info = inputs_mod.load_model(self.checked)
            summary.update(input_shape=list(info.input_shape), output_width=info.output_width,
                           parameters=info.parameters)
            self.parameters = info.parameters
        return model

    def calibrate(self):
        config = self.config
        with self.stages("calibrate", batches=config.iteration_count, batch_size=config.batch_size) as summary:
            from . import calibrate

            batches = calibrate.draw_batches(len(self.checked.calibration_images), config.batch_size,
                                             config.iteration_count, config.seed)
            self.distinct_drawn = len({int(i) for b in batches for i in b})
            summary["distinct_images"] = self.distinct_drawn
        return batches

    def quantize(self, model, batches):
        config = self.config
        with self.stages("quantize", **config.quantization_settings()) as summary:
            from . import calibrate, quantize  # imports MCT

            progress = Progress(self.log, "quantize", config.iteration_count, "batch", task="calibration")
            data_gen = calibrate.representative_dataset(self.checked.calibration_images, batches, config,
                                                        on_batch=progress.advance, on_skip=self.skip)
            quantized = quantize.quantize(model, data_gen, config)
            progress.close()
            self.resource_utilization = quantized.resource_utilization
            summary["resource_utilization"] = quantized.resource_utilization
        return quantized

    def export(self, model, quantized) -> tuple[Path, Path]:
        output_dir = self.config.output_dir
        with self.stages("export", export_format=self.config.export_format) as summary:
            from . import export

            quantized_temp = self.staging.temp_path(output_dir / QUANTIZED_FILE)
            with _output_errors(output_dir):
                export.export_quantized(quantized.model, quantized_temp, self.config.export_format)
            float_temp = _write(self.staging, output_dir / MODEL_FILE, export.convert_float(model))
            summary.update(model_tflite_bytes=float_temp.stat().st_size,
                           model_quantized_tflite_bytes=quantized_temp.stat().st_size)
        return float_temp, quantized_temp

    def evaluate(self, model, quantized, model_file: Path, quantized_file: Path):
        samples = self.checked.samples
        with self.stages("evaluate", images=len(samples)) as summary:
            from . import evaluate

            progress = Progress(self.log, "evaluate", len(samples), "image", task="evaluation")
            predictors = {
                "keras": evaluate.KerasPredictor(model),
                "keras_quantized": evaluate.KerasPredictor(quantized.model),
                "tflite": evaluate.TFLitePredictor(model_file),
                "tflite_quantized": evaluate.TFLitePredictor(quantized_file),
            }
            evaluation = evaluate.evaluate(predictors, samples, self.config, on_images=progress.advance,
                                           on_skip=self.skip)
            progress.close()
            summary.update({f"top_1_accuracy_{name}": round(evaluation.accuracy(name), 4) for name in predictors})
            self.latencies = {name: evaluate.latency(predict, evaluation.example) for name, predict in predictors.items()}
            summary["latency_median_ms"] = {name: facts["median_ms"] for name, facts in self.latencies.items()}
        return evaluation

    def report(self, evaluation, started_at: str) -> RunResult:
        config, staging = self.config, self.staging
        with self.stages("report") as summary:
            from . import report, report_html

            facts = self._model_facts()
            results = report.results(evaluation, self.checked.labels, facts, self._extra(evaluation, facts))
            self._log_gate(results["gate"])
            _write_json(staging, config.evaluate_result_dir / RESULTS_FILE, results)
            _write(staging, config.evaluate_result_dir / REPORT_FILE, report_html.render(results).encode())
            outcome = "success" if not results["gate"] or results["gate"]["passed"] else AccuracyGateError.kind
            manifest = _manifest(config, self.config_path, staging, self.stages, started_at, outcome)
            _write_json(staging, config.output_dir / MANIFEST_FILE, manifest)
            published = staging.commit()
            for path in published:
                self.log.info(Event.ARTIFACT_WRITTEN.value, **artifacts.describe(path).record())
            summary["artifacts"] = len(published)
        return RunResult(results, manifest, published)

    def _model_facts(self) -> dict[str, dict[str, Any]]:
        from . import evaluate, images, report

        output_dir = self.config.output_dir
        files = {"tflite": output_dir / MODEL_FILE, "tflite_quantized": output_dir / QUANTIZED_FILE}
        facts = {}
        for name in report.MODELS:
            file = files.get(name)
            facts[name] = {"file": str(file) if file else None,
                           "bytes": self.staging.pending[file].stat().st_size if file else None,
                           "batch_size": evaluate.EVAL_BATCH_SIZE, "threads": images.usable_cpus(),
                           "latency": self.latencies.get(name)}
        return facts

    def _extra(self, evaluation, facts: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from . import report

        config = self.config
        skipped = [*self.checked.skipped, *self.skipped]
        accuracies = {name: evaluation.accuracy(name) for name in facts}
        return {"target_platform": config.target_platform, "seed": config.seed,
                "quantization": config.quantization_settings(),
                "calibration": {"batches": config.iteration_count, "batch_size": config.batch_size,
                                "images_available": len(self.checked.calibration_images),
                                "distinct_images_drawn": self.distinct_drawn},
                "skipped_images": [{"path": str(p), "reason": r} for p, r in skipped],
                "sizes": report.sizes(self.parameters, facts["tflite"]["bytes"], facts["tflite_quantized"]["bytes"]),
                "resource_utilization": self.resource_utilization,
                "gate": report.gate(accuracies, config.max_top1_drop)}

    def _log_gate(self, verdict: dict[str, Any] | None) -> None:
        if verdict is not None:
            level = self.log.info if verdict["passed"] else self.log.error
            level(Event.ACCURACY_GATE.value, **verdict)


def _manifest(config, config_path: Path, staging: artifacts.Staging, stages: _Stages, started_at: str,
              outcome: str) -> dict:
    from . import quantize, report
    import numpy
    import tensorflow as tf

    records = [staging.staged(final).record() for final in staging.pending]
    versions = {"mctq_job": __version__, "tensorflow": tf.__version__, "numpy": numpy.__version__,
                **quantize.versions()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report.manifest(
        run_id=staging.run_id, started_at=started_at, finished_at=_now(), config_file=str(config_path),
        config_doc=config.to_document(), config_sha256=config.digest(), versions=versions,
        stage_seconds=dict(stages.seconds), peak_memory_bytes=peak, artifacts=records, outcome=outcome)


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
        raise OutputError(f"cannot write in {folder}: {exc.strerror}; expected a writable folder with free space",
                          folder=str(folder)) from exc


def _write(staging: artifacts.Staging, final: Path, data: bytes) -> Path:
    with _output_errors(final.parent):
        return staging.write_bytes(final, data)


def _write_json(staging: artifacts.Staging, final: Path, document: Any) -> Path:
    return _write(staging, final, artifacts.json_bytes(document))


def _seed_everything(seed: int) -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
