"""The job as an ordered list of stages over one :class:`~mctq_job.context.RunContext`:

    config -> inputs -> model -> calibrate -> quantize -> export -> [imx500] -> evaluate -> [diagnose] -> [recover] -> report

Each stage is a function ``run(ctx, <values it needs>) -> <value>`` in a module of its own;
the report is built from the values alone. :func:`run` returns the report stage's
:class:`~mctq_job.publish.RunResult` or raises an :class:`~mctq_job.errors.MctqError`; it
never prints and never exits (the CLI does both). TensorFlow and MCT are imported by
:func:`heavy_stages`, after the configuration and the inputs are checked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import configure
from . import inputs as inputs_stage
from .config import Config
from .context import RunContext
from .errors import ConfigError
from .events import Stage

if TYPE_CHECKING:
    from .calibrate import Drawn
    from .diagnose import Diagnosis
    from .evaluate import Evaluation
    from .export import Exported
    from .imx500 import Converter
    from .imx500_package import Packaged
    from .inputs import Inputs
    from .model import Loaded
    from .publish import RunResult
    from .quantize import Quantized
    from .recover import Produced, Recovery
    from .report import RunValues


@dataclass(frozen=True)
class HeavyStages:
    """The stage functions after ``inputs``, which need TensorFlow and MCT: the real ones come
    from :func:`heavy_stages`; tests hand in small fakes to check the order and the clean-up."""

    model: Callable[[RunContext, Inputs], Loaded]
    calibrate: Callable[[RunContext, Inputs], Drawn]
    quantize: Callable[[RunContext, Inputs, Loaded, Drawn], Quantized]
    export: Callable[[RunContext, Inputs, Loaded, Drawn, Quantized], Exported]
    imx500: Callable[[RunContext, Converter, Exported], Packaged]
    evaluate: Callable[[RunContext, Inputs, Loaded, Quantized, Exported], Evaluation]
    diagnose: Callable[[RunContext, Inputs, Loaded, Quantized, Exported, Drawn], Diagnosis]
    report: Callable[[RunContext, RunValues], RunResult]
    recover: Callable[[RunContext, Inputs, Loaded, Produced, Diagnosis | None], Recovery] | None = None


def _imported(module: str) -> Callable[..., Any]:
    """``mctq_job.<module>.run``, imported when the stage starts: TensorFlow's and MCT's import
    time then counts in the stage that needs them (model, quantize), not before it."""

    def stage(*args: Any) -> Any:
        return importlib.import_module(f"{__package__}.{module}").run(*args)

    stage.__qualname__ = f"{module}.run"
    return stage


def heavy_stages() -> HeavyStages:
    modules = {
        "model": "model",
        "calibrate": "calibrate",
        "quantize": "quantize",
        "export": "export",
        "imx500": "imx500_package",
        "evaluate": "evaluate",
        "diagnose": "diagnose",
        "report": "publish",
        "recover": "recover",
    }
    return HeavyStages(**{stage: _imported(module) for stage, module in modules.items()})


def validate(ctx: RunContext, config_path: Path) -> Inputs:
    """Stages ``config`` and ``inputs``: everything that can be known without TensorFlow."""
    configured = ctx.stage(Stage.CONFIG).run(configure.run, config_path)
    return ctx.stage(Stage.INPUTS).run(inputs_stage.run, configured)


#: The tasks a whole run can carry out; ``validate`` checks the inputs of every task of the schema.
RUNNABLE_TASKS = ("classification", "detection")


def runnable(config: Config) -> None:
    """Refuse, before any work, a task whose quantization, export and evaluation are not built
    yet, rather than run it as another task."""
    if config.task not in RUNNABLE_TASKS:
        raise ConfigError(
            f"key 'task': {config.task!r} is not supported by `mctq-job run` yet: `mctq-job validate` checks its "
            f"inputs, but the run's stages (calibration, export, evaluation, report) know classification only; "
            f"accepted for a run: {', '.join(map(repr, RUNNABLE_TASKS))}",
            key="task",
        )


def run(
    ctx: RunContext,
    config_path: Path,
    overrides: dict[str, Any] | None = None,
    stages: Callable[[], HeavyStages] = heavy_stages,
) -> RunResult:
    """The whole job. ``overrides`` (the command line's) replace the configuration's values.
    Raises Imx500NotFitError or AccuracyGateError after publishing everything when a gate fails."""
    configured = ctx.stage(Stage.CONFIG).run(configure.run, config_path, overrides)
    runnable(configured.config)
    inputs = ctx.stage(Stage.INPUTS).run(inputs_stage.run, configured)
    config = inputs.config
    heavy = stages()  # imports nothing yet: each stage imports its module when it starts
    with ctx.publishing(config.output_dir, config.evaluate_result_dir):
        loaded = ctx.stage(Stage.MODEL).run(heavy.model, inputs)
        drawn = ctx.stage(Stage.CALIBRATE, batches=config.iteration_count, batch_size=config.batch_size).run(
            heavy.calibrate, inputs
        )
        quantized = ctx.stage(Stage.QUANTIZE, **config.quantization_settings()).run(
            heavy.quantize, inputs, loaded, drawn
        )
        exported = ctx.stage(Stage.EXPORT, export_format=config.export_format, extra_exports=config.extra_exports).run(
            heavy.export, inputs, loaded, drawn, quantized
        )
        packaged = None
        if inputs.imx500_converter is not None:  # found in the inputs stage where imx500.package is on
            packaged = ctx.stage(Stage.IMX500).run(heavy.imx500, inputs.imx500_converter, exported)
        evaluation = ctx.stage(Stage.EVALUATE, images=len(inputs.truth.images)).run(
            heavy.evaluate, inputs, loaded, quantized, exported
        )
        diagnosis = None
        if config.diagnosis.images:
            diagnosis = ctx.stage(Stage.DIAGNOSE, images=config.diagnosis.images).run(
                heavy.diagnose, inputs, loaded, quantized, exported, drawn
            )
        recovery = None
        if config.recover is not None and heavy.recover is not None:
            from .recover import Produced, needed

            if needed(config, evaluation):
                recovery = ctx.stage(
                    Stage.RECOVER, max_attempts=config.recover.max_attempts, max_seconds=config.recover.max_seconds
                ).run(
                    heavy.recover,
                    inputs,
                    loaded,
                    Produced(config, drawn, quantized, exported, evaluation, packaged),
                    diagnosis,
                )
                # the winner's configuration and files where one is within the gate, else the run's own
                won = recovery.published
                config, drawn, quantized, exported = won.config, won.drawn, won.quantized, won.exported
                evaluation, packaged = won.evaluation, won.packaged
                inputs = replace(inputs, config=config)
        from .report import RunValues

        values = RunValues(
            config,
            inputs,
            loaded.info,
            drawn,
            quantized,
            exported,
            evaluation,
            packaged.facts if packaged else None,
            diagnosis,
            recovery,
        )
        result = ctx.stage(Stage.REPORT).run(heavy.report, values)
    from .errors import AccuracyGateError
    from .publish import failed_gate

    failed = failed_gate(config, result.results)
    if isinstance(failed, AccuracyGateError) and recovery is not None:
        context = failed.context
        failed = AccuracyGateError(f"{failed.message}; {recovery.sentence()}")
        failed.context = context
    if failed is not None:
        raise failed
    return result
