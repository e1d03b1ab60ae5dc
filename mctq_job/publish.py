"""Stage ``report``: results.json, report.html and manifest.json from the stages' values
alone, then every staged artifact published at once (manifest.json last).

A run whose published results fail a gate (the chip's fit, the accuracy) is still
published whole; :func:`failed_gate` names the gate, and the pipeline raises its error after
the output folders are released."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, artifacts, report, report_html
from .artifacts import MANIFEST_FILE, QUANTIZED_FILE, REPORT_FILE, RESULTS_FILE
from .config import Config
from .context import RunContext, now, peak_memory_bytes
from .errors import AccuracyGateError, Imx500NotFitError, MctqError
from .events import Event
from .results import Manifest, Results


@dataclass(frozen=True)
class RunResult:
    """The stage's value, and the run's."""

    results: Results
    manifest: Manifest
    published: list[Path]

    def summary(self) -> dict[str, Any]:
        return {"artifacts": len(self.published)}


def run(ctx: RunContext, values: report.RunValues) -> RunResult:
    config = values.config
    results = report.results(values)
    verdict = results.gate
    if verdict is not None:
        (ctx.log.info if verdict.passed else ctx.log.error)(Event.ACCURACY_GATE.value, **verdict.document())
    ctx.write(config.evaluate_result_dir / RESULTS_FILE, artifacts.json_bytes(results.document()))
    ctx.write(config.evaluate_result_dir / REPORT_FILE, report_html.render(results).encode())
    failed = failed_gate(config, results)
    manifest = _manifest(ctx, values, outcome=failed.kind if failed else "success")
    ctx.write(config.output_dir / MANIFEST_FILE, artifacts.json_bytes(manifest.document()))
    published = ctx.require_staging().commit()
    for path in published:
        ctx.log.info(Event.ARTIFACT_WRITTEN.value, **artifacts.describe(path).record())
    return RunResult(results, manifest, published)


def failed_gate(config: Config, results: Results) -> MctqError | None:
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
    if verdict and not verdict.passed and verdict.map_drop is not None:
        return AccuracyGateError(
            f"mAP@[.5:.95] dropped by {100 * verdict.map_drop:.1f} % of the Keras model's to {QUANTIZED_FILE}, more "
            f"than max_map_drop {verdict.max_map_drop}; the models, results.json and report.html are written for "
            f"inspection",
            **verdict.document(),
        )
    if verdict and not verdict.passed:
        return AccuracyGateError(
            f"top-1 accuracy dropped by {verdict.top_1_drop:.4f} from the Keras model to {QUANTIZED_FILE}, "
            f"more than max_top1_drop {verdict.max_top1_drop}; the models, results.json and report.html are "
            f"written for inspection",
            **verdict.document(),
        )
    return None


def _manifest(ctx: RunContext, values: report.RunValues, outcome: str) -> Manifest:
    import numpy
    import tensorflow as tf

    from . import quantize

    staging = ctx.require_staging()
    config = values.config
    versions = {
        "mctq_job": __version__,
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
        **quantize.versions(),
    }
    return report.manifest(
        run_id=staging.run_id,
        started_at=ctx.started_at,
        finished_at=now(),
        config_file=str(values.inputs.config_file),
        config_doc=config.to_document(),
        config_sha256=config.digest(),
        versions=versions,
        stage_seconds=dict(ctx.seconds),
        peak_memory_bytes=peak_memory_bytes(),
        artifacts=[staging.staged(final).record() for final in staging.pending],
        outcome=outcome,
    )
