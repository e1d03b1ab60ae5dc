"""Stage ``recover``: where the accuracy gate fails and ``recover`` is set, other quantization
settings, ranked by the diagnosis' findings, each a real re-quantization and re-export of the
whole model, until one is within the gate.

Each attempt runs the ``calibrate`` (where it changes the batches), ``quantize``, ``export`` and
``imx500`` stages again with the configuration changed by the candidate, staged apart from the
run's own files (a staging area of its own, removed when the attempt loses or the process is
interrupted). It is scored first on the diagnosis' subset of the evaluation images (a candidate
far outside the gate there is rejected without the full evaluation), then on every evaluation
image; only the quantized models are evaluated again. The first attempt within the gate wins:
its files replace the run's staged ones, and ``recovered_configuration.json`` (the user's
configuration with the winner's settings, every default filled in) is staged beside them, so
that running it gives the same files. Without a winner the run's own files are published and
the gate fails as it would have.

What the target cannot run is never published: the full-integer model_quantized.tflite must
stay fully integer (by its census), and with ``imx500.package`` the converter must accept the
attempt's model. 16-bit activations (imx500 target platform version 4.0 and later) are measured
on MCT's Keras model and reported as IMX500-only: no TFLite file can carry them (the full-integer
export refuses them, and TensorFlow Lite's converter cannot write 16-bit unsigned activations,
MCT's exporters included).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import structlog

from . import artifacts, calibrate, diagnose, evaluate, export, imx500_package, qat, quantize
from .config import Config, Gptq, Qat
from .errors import ToolkitError, UnsupportedModelError
from .events import Event, Stage

if TYPE_CHECKING:
    from .context import RunContext
    from .diagnose import Diagnosis, Finding
    from .evaluate import Evaluation
    from .export import Exported
    from .imx500_package import Packaged
    from .inputs import Inputs
    from .model import Loaded
    from .quantize import Quantized

#: How an attempt ended. ``rejected_on_subset``: its drop on the subset was beyond the gate by
#: more than the subset's sampling error; ``imx500_only``: measured on MCT's Keras model, not
#: publishable as TFLite; ``not_applicable``: MCT refused the setting for this model and target.
ATTEMPT_OUTCOMES = ("within_budget", "over_budget", "rejected_on_subset", "imx500_only", "not_applicable", "failed")
#: Why recovery ended.
STOPS = ("within_budget", "max_attempts", "max_seconds", "candidates_exhausted")
#: Findings that say an activation's range is stretched (a few values or channels, or one input
#: of a concatenation, far above the rest): a tighter threshold or more bits answers them.
RANGE_FINDINGS = ("unbalanced_concatenation", "activation_outlier", "outlier_channel")
#: Evaluation images of the subset where the diagnosis is off (``diagnosis.images`` 0).
DEFAULT_SUBSET_IMAGES = 64
#: "More calibration batches" multiplies iteration_count by this.
CALIBRATION_FACTOR = 4
#: Fixes recovery does not try, and why (results.json's recovery.not_tried).
NOT_TRIED: tuple[tuple[str, str], ...] = (
    (
        "mixed_precision",
        "mixed precision lowers some weights below 8 bits to save memory; on these targets no weight "
        "can go above 8 bits, so it cannot win accuracy back",
    ),
)
#: QAT's fix name in recovery.not_tried, where it is not offered.
QAT_FIX = "quantization-aware training"
#: QAT's options where the configuration gives none (config.Qat's defaults).
QAT_OPTIONS = Qat()
#: GPTQ's epochs where the configuration gives none (config.Gptq's default).
GPTQ_EPOCHS = Gptq().epochs
#: The 16-bit activation candidate needs this imx500 target platform version or a later one.
SIXTEEN_BIT_VERSION = "4.0"


@dataclass(frozen=True)
class Metric:
    """The figure the gate and the attempts are scored by: top-1 for classification
    (``max_top1_drop``, an absolute drop), mAP@[.5:.95] for detection (``max_map_drop``, a drop
    relative to the Keras model's mAP, as the gate computes it)."""

    name: str  # "top_1" or "map_50_95": results.json's key stem
    label: str  # in words
    budget: float

    def of(self, tally: Any, model: str) -> float:
        if self.name == "top_1":
            return float(tally.accuracy(model))
        return float(tally.metrics(model)["map_50_95"] or 0.0)

    def drop(self, reference: float, candidate: float) -> float:
        if self.name == "top_1":
            return round(reference - candidate, 12)
        return max(-1.0, min(1.0, round((reference - candidate) / reference, 12))) if reference > 0 else 0.0


def metric(config: Config) -> Metric | None:
    """The configuration's gate as a :class:`Metric`; None without a gate."""
    if config.task == "detection":
        return None if config.max_map_drop is None else Metric("map_50_95", "mAP@[.5:.95]", config.max_map_drop)
    return None if config.max_top1_drop is None else Metric("top_1", "top-1", config.max_top1_drop)


@dataclass(frozen=True)
class Candidate:
    """One fix to try: configuration keys to set (merged into the run's configuration), or, for
    the IMX500-only candidate, per-layer activation bit widths no configuration key holds."""

    description: str
    reason: str  # the finding (or its absence) that puts it on the list
    change: dict[str, Any]
    activation_bits: dict[str, int] | None = None


@dataclass(frozen=True)
class Attempt:
    number: int
    description: str
    reason: str
    change: dict[str, Any]
    activation_bits: dict[str, int] | None
    outcome: str
    seconds: float
    #: The gate's metric (:class:`Metric`: top-1 or mAP@[.5:.95]) of model_quantized.tflite (MCT's
    #: model where IMX500-only) on the subset, on every evaluation image, of MCT's quantized Keras
    #: model on every image, and the gate's drop from the Keras model to ``score``.
    subset_score: float | None = None
    score: float | None = None
    keras_quantized_score: float | None = None
    drop: float | None = None
    detail: str | None = None  # why it failed or was not applicable
    metric: str = "top_1"

    def record(self) -> dict[str, Any]:
        drop = "top_1_drop" if self.metric == "top_1" else "map_drop"
        return {
            "attempt": self.number,
            "description": self.description,
            "reason": self.reason,
            "change": self.change,
            "activation_bits": self.activation_bits,
            "outcome": self.outcome,
            f"subset_{self.metric}": self.subset_score,
            self.metric: self.score,
            f"keras_quantized_{self.metric}": self.keras_quantized_score,
            drop: self.drop,
            "seconds": self.seconds,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Produced:
    """What the stages made for one configuration: the baseline's, or a winning attempt's."""

    config: Config
    drawn: calibrate.Drawn
    quantized: Quantized
    exported: Exported
    evaluation: Evaluation
    packaged: Packaged | None


@dataclass(frozen=True)
class Recovery:
    """The stage's value: the attempts, the winner (or none) and what the run publishes."""

    metric: Metric  # the gate's figure and budget
    max_attempts: int
    max_seconds: float
    subset_images: int
    reference: float  # the Keras model's metric, every evaluation image
    reference_subset: float
    baseline: float  # model_quantized.tflite's with the configuration as given
    baseline_subset: float
    attempts: list[Attempt]
    winner: int | None
    best: int | None
    stopped: str
    seconds: float
    published: Produced  # the winner's, or the baseline's where none won
    not_tried: tuple[tuple[str, str], ...] = NOT_TRIED  # NOT_TRIED, and QAT with its reason where it is not offered

    @property
    def baseline_drop(self) -> float:
        return self.metric.drop(self.reference, self.baseline)

    def summary(self) -> dict[str, Any]:
        return {"attempts": len(self.attempts), "winner": self.winner, "best": self.best, "stopped": self.stopped}

    def sentence(self) -> str:
        """One sentence for the log and the gate's error: what recovery did."""
        label = self.metric.label
        tried = f"recovery made {len(self.attempts)} attempt(s) in {self.seconds:.0f} s and stopped ({self.stopped})"
        if self.winner:
            won = self.attempts[self.winner - 1]
            return f"{tried}: attempt {won.number}, {won.description}, is within the gate ({label} drop {won.drop:.4f})"
        text = f"{tried}; none was within the gate"
        best = self.attempts[self.best - 1] if self.best else None
        if best is not None and best.score is not None and best.drop is not None:
            text += (
                f", the best was attempt {best.number}, {best.description} ({label} {best.score:.4f}, drop "
                f"{best.drop:.4f})"
            )
        elif best is not None and best.subset_score is not None:
            text += (
                f", the best was attempt {best.number}, {best.description} ({label} {best.subset_score:.4f} on the "
                f"{self.subset_images}-image subset, against {self.reference_subset:.4f} for the Keras model)"
            )
        imx500 = [
            a
            for a in self.attempts
            if a.outcome == "imx500_only" and a.drop is not None and a.drop <= self.metric.budget
        ]
        if imx500:
            a = imx500[0]
            text += (
                f"; on the IMX500 only (not as TFLite), attempt {a.number}, {a.description}, is within it "
                f"(MCT's Keras model: {label} {a.score:.4f})"
            )
        return text


def needed(config: Config, evaluation: Evaluation) -> bool:
    """Whether recovery runs: ``recover`` is set and the gate fails (the gate's own rounding)."""
    gate = metric(config)
    if config.recover is None or gate is None:
        return False
    tally = evaluation.tally
    return gate.drop(gate.of(tally, "keras"), gate.of(tally, "tflite_quantized")) > gate.budget


def run(ctx: RunContext, inputs: Inputs, loaded: Loaded, baseline: Produced, diagnosis: Diagnosis | None) -> Recovery:
    """Stage ``recover``: the candidates in order until one is within the gate, or the budget
    (``recover.max_attempts``, ``recover.max_seconds``) or the candidates run out."""
    began = time.monotonic()
    config = inputs.config
    gate = metric(config)
    assert config.recover is not None and gate is not None  # needed() said so
    truth = inputs.truth
    chosen = diagnose.diagnosis_images(truth.images, config.diagnosis.images or DEFAULT_SUBSET_IMAGES, config.seed)
    post = None
    if config.task == "detection":  # the cut files are scored after the model's own post-processing
        from .detection_cut import post_processing

        post = post_processing(loaded.model)
    scoring = _Scoring(
        inputs, truth.without(set(truth.images) - set(chosen)), len(chosen) >= len(truth.images), gate, post
    )
    reference = scoring.subset_scores(
        {"keras": loaded.model}, {"tflite_quantized": baseline.exported.models["tflite_quantized"].staged}
    )
    scoring.reference_subset = gate.of(reference.tally, "keras")
    scoring.reference = gate.of(baseline.evaluation.tally, "keras")
    # A first attempt costs about what the baseline's quantization, export and evaluation of the
    # quantized models cost; later ones about the longest attempt so far.
    estimate = sum(ctx.seconds.get(stage, 0.0) for stage in (Stage.QUANTIZE, Stage.EXPORT, Stage.IMX500))
    estimate += sum(baseline.evaluation.seconds.get(name, 0.0) for name in ("keras_quantized", "tflite_quantized"))
    stage_seconds = dict(ctx.seconds)
    attempts: list[Attempt] = []
    winner: Produced | None = None
    stopped = "candidates_exhausted"
    found = diagnosis.findings if diagnosis else []
    labelled = qat.labels_of(config.dataset_image_dir, inputs.calibration_images, getattr(truth, "labels", {}))
    listed = candidates(config, found, len(inputs.calibration_images), labelled is not None)
    trained = min(QAT_OPTIONS.images, len(inputs.calibration_images)) / (config.batch_size * config.iteration_count)
    for candidate in listed:
        if len(attempts) >= config.recover.max_attempts:
            stopped = "max_attempts"
            break
        longest = max([estimate, *(a.seconds for a in attempts)])
        if time.monotonic() - began + expected_seconds(candidate, longest, trained) > config.recover.max_seconds:
            stopped = "max_seconds"
            break
        attempt, produced = _attempt(ctx, len(attempts) + 1, candidate, inputs, loaded, baseline, scoring)
        attempts.append(attempt)
        ctx.log.info(Event.RECOVER_ATTEMPT.value, **attempt.record())
        if produced is not None:
            winner = produced
            stopped = "within_budget"
            break
    # manifest.json's stage_seconds keep the run's own stages; the attempts' are in results.json
    ctx.seconds.clear()
    ctx.seconds.update(stage_seconds)
    recovery = Recovery(
        metric=gate,
        max_attempts=config.recover.max_attempts,
        max_seconds=config.recover.max_seconds,
        subset_images=len(chosen),
        reference=scoring.reference,
        reference_subset=scoring.reference_subset,
        baseline=gate.of(baseline.evaluation.tally, "tflite_quantized"),
        baseline_subset=gate.of(reference.tally, "tflite_quantized"),
        attempts=attempts,
        winner=attempts[-1].number if winner else None,
        best=best(attempts),
        stopped=stopped,
        seconds=round(time.monotonic() - began, 3),
        published=winner or baseline,
        not_tried=(*NOT_TRIED, *not_offered(config, labelled is not None)),
    )
    ctx.log.info(
        Event.RECOVER_STOPPED.value,
        stopped=stopped,
        winner=recovery.winner,
        best=recovery.best,
        seconds=recovery.seconds,
        message=recovery.sentence(),
    )
    return recovery


def expected_seconds(candidate: Candidate, longest: float, trained_per_calibrated: float = 1.0) -> float:
    """About how long ``candidate`` takes, from the longest PTQ attempt so far (or the baseline):
    GPTQ's epochs cost about half a quantization each (measured: 5 epochs, 3.5 times), more
    calibration batches about twice; a QAT epoch about a quarter of a quantization per image
    trained on for each image calibrated on (``trained_per_calibrated``; measured on digits:
    560 images against 96, 1.8 s an epoch against a 10 s attempt)."""
    method = candidate.change.get("quantization_method")
    if method == "gptq":
        return longest * (1 + GPTQ_EPOCHS / 2)
    if method == "qat":
        return longest * (1 + QAT_OPTIONS.epochs * max(trained_per_calibrated, 1.0) / 4)
    if "iteration_count" in candidate.change:
        return longest * 2
    return longest


def best(attempts: Sequence[Attempt]) -> int | None:
    """The publishable attempt that scored highest: by the gate's metric on every evaluation image
    where any got that far, else on the subset (ties: the earlier); None where none was scored."""
    publishable = [a for a in attempts if a.outcome in ("within_budget", "over_budget", "rejected_on_subset")]
    full = [a for a in publishable if a.score is not None]
    if full:
        return max(full, key=lambda a: (a.score or 0.0, -a.number)).number
    subset = [a for a in publishable if a.subset_score is not None]
    return max(subset, key=lambda a: (a.subset_score or 0.0, -a.number)).number if subset else None


# --- The candidates -----------------------------------------------------------------------


def candidates(
    config: Config, findings: Sequence[Finding], calibration_images: int, labelled: bool = False
) -> list[Candidate]:
    """The fixes to try, most likely first: for a stretched range (an unbalanced concatenation,
    outliers) a tighter threshold, then 16-bit activations at the culprit (IMX500-only); then,
    for any model, more calibration batches, another error method and GPTQ; last, where the
    calibration images are ``labelled`` (class sub-folders named like the label file's classes),
    quantization-aware training. A candidate that changes nothing in this configuration is left out."""
    ranges = [f for f in findings if f.kind in RANGE_FINDINGS]
    culprits = ", ".join(dict.fromkeys(f"{f.kind} at '{f.layer}'" for f in ranges))
    listed: list[Candidate] = []
    if ranges:
        listed += [
            Candidate(
                "outlier removal at 4 standard deviations (activations.z_threshold 4)",
                culprits,
                {"activations": {"z_threshold": 4.0}},
            ),
            Candidate(
                "the MAE threshold, which clips more than MSE (activations.error_method mae)",
                culprits,
                {"activations": {"error_method": "mae"}},
            ),
        ]
        if config.target_platform == "imx500":
            layer = ranges[0].layer
            version = max(config.target_platform_version, SIXTEEN_BIT_VERSION, key=float)
            listed.append(
                Candidate(
                    f"16-bit activations at '{layer}' (imx500 target platform version {version}; IMX500-only: "
                    "no TFLite file can carry them)",
                    culprits,
                    {"target_platform_version": version},
                    {layer: 16},
                )
            )
    general = "no finding names a layer" if not ranges else "after the fixes for the findings"
    drawn = config.batch_size * config.iteration_count
    if drawn < calibration_images:
        more = min(config.iteration_count * CALIBRATION_FACTOR, 1_000_000)
        listed.append(
            Candidate(
                f"{more} calibration batches instead of {config.iteration_count} (iteration_count)",
                f"{general}; the calibration drew {drawn} of {calibration_images} images",
                {"iteration_count": more},
            )
        )
    listed.append(
        Candidate("the MAE threshold (activations.error_method mae)", general, {"activations": {"error_method": "mae"}})
    )
    if config.quantization_method == "ptq":
        listed.append(
            Candidate(
                "GPTQ, fine-tuning the quantized weights (quantization_method gptq)",
                general,
                {"quantization_method": "gptq"},
            )
        )
    if not not_offered(config, labelled):
        listed.append(
            Candidate(
                f"quantization-aware training, {QAT_OPTIONS.epochs} epochs on the labelled calibration images "
                "(quantization_method qat)",
                f"{general}; the calibration images sit in class folders",
                {"quantization_method": "qat", "gptq": None, "qat": QAT_OPTIONS.model_dump()},
            )
        )
    return _distinct(config, listed)


def not_offered(config: Config, labelled: bool) -> list[tuple[str, str]]:
    """Why QAT is not a candidate for this configuration (results.json's recovery.not_tried),
    or nothing where it is."""
    if config.quantization_method == "qat":
        return [(QAT_FIX, "the configuration quantizes with it already")]
    if config.task != "classification":
        return [(QAT_FIX, f"it trains on labelled images, which task {config.task!r} has none of")]
    if not labelled:
        return [(QAT_FIX, qat.UNLABELLED)]
    if config.mixed_precision is not None:
        return [(QAT_FIX, "the job does not combine it with mixed_precision")]
    return []


def _distinct(config: Config, listed: list[Candidate]) -> list[Candidate]:
    """Each change once, and only where it changes this configuration."""
    seen: list[dict[str, Any]] = []
    kept = []
    current = config.to_document()
    for candidate in listed:
        merged = merged_document(current, candidate.change)
        key = {**merged, "_bits": candidate.activation_bits}
        if (merged == current and not candidate.activation_bits) or key in seen:
            continue
        seen.append(key)
        kept.append(candidate)
    return kept


def merged_document(document: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``change`` merged in, nested objects key by key."""
    out = dict(document)
    for key, value in change.items():
        inner = out.get(key)
        out[key] = merged_document(inner, value) if isinstance(value, dict) and isinstance(inner, dict) else value
    return out


def configured(config: Config, change: dict[str, Any]) -> Config:
    """The configuration an attempt runs with: ``config`` with ``change`` merged in, validated."""
    return Config.model_validate(merged_document(config.to_document(), change))


# --- One attempt --------------------------------------------------------------------------


@dataclass
class _Scoring:
    inputs: Inputs
    subset: Any  # the task's ground truth restricted to the subset
    subset_is_everything: bool
    metric: Metric
    post: Any = None  # a detector's post-processing, applied after its cut TFLite files
    reference: float = 0.0  # the Keras model's metric, every evaluation image
    reference_subset: float = 0.0

    def subset_scores(self, keras: dict[str, Any], tflite: dict[str, Any]) -> Evaluation:
        return evaluate.evaluate(evaluate.predictors(keras, tflite, self.post), self.subset, self.inputs.config)

    def full_scores(self, keras: dict[str, Any], tflite: dict[str, Any]) -> Evaluation:
        return evaluate.evaluate(evaluate.predictors(keras, tflite, self.post), self.inputs.truth, self.inputs.config)

    def slack(self) -> float:
        """How far beyond the gate a subset's drop may be and still be confirmed on every image:
        two standard errors of a share measured on the subset's images, at most 1/sqrt(n). For
        mAP (a relative drop, no per-image pairs) the same 1/sqrt(n) is a loose allowance, not a
        standard error: the subset only rejects attempts far outside the gate."""
        return 1 / math.sqrt(max(len(self.subset.images), 1))


def _attempt(
    ctx: RunContext,
    number: int,
    candidate: Candidate,
    inputs: Inputs,
    loaded: Loaded,
    baseline: Produced,
    scoring: _Scoring,
) -> tuple[Attempt, Produced | None]:
    """One candidate, staged apart: its files replace the run's only where it wins."""
    began = time.monotonic()
    config = configured(inputs.config, candidate.change)
    attempt_inputs = replace(inputs, config=config)
    record: dict[str, Any] = {
        "number": number,
        "description": candidate.description,
        "reason": candidate.reason,
        "change": candidate.change,
        "activation_bits": candidate.activation_bits,
    }
    main = ctx.require_staging()
    staging = artifacts.Staging(f"{main.run_id}-{number}")
    unregister = ctx.cleanups.add(staging.abort)
    ctx.staging = staging
    produced: Produced | None = None
    try:
        with structlog.contextvars.bound_contextvars(attempt=number):
            figures, produced = _made_and_scored(ctx, number, candidate, attempt_inputs, loaded, baseline, scoring)
    except (ToolkitError, UnsupportedModelError) as exc:  # the candidate's, not the run's: the next one may do
        if staging.aborted:  # interrupted meanwhile: the process is ending
            raise
        outcome = "not_applicable" if candidate.activation_bits else "failed"
        figures = {"outcome": outcome, "detail": exc.message}
    finally:
        ctx.staging = main
    try:
        if produced is not None:  # the winner: its files become the run's
            main.adopt(staging)
            produced = replace(produced, exported=_restaged(produced.exported, main))
            ctx.write(config.output_dir / artifacts.RECOVERED_CONFIG_FILE, artifacts.json_bytes(config.to_document()))
    finally:
        staging.abort()
        unregister()
    return Attempt(
        **record, **figures, metric=scoring.metric.name, seconds=round(time.monotonic() - began, 3)
    ), produced


def _made_and_scored(
    ctx: RunContext,
    number: int,
    candidate: Candidate,
    inputs: Inputs,
    loaded: Loaded,
    baseline: Produced,
    scoring: _Scoring,
) -> tuple[dict[str, Any], Produced | None]:
    config, before = inputs.config, baseline.config
    drawn = baseline.drawn
    if (config.batch_size, config.iteration_count) != (before.batch_size, before.iteration_count):
        drawn = ctx.stage(
            Stage.CALIBRATE, attempt=number, batches=config.iteration_count, batch_size=config.batch_size
        ).run(calibrate.run, inputs)
    quantized = ctx.stage(Stage.QUANTIZE, attempt=number, **config.quantization_settings()).run(
        quantize.run, inputs, loaded, drawn, candidate.activation_bits
    )
    if candidate.activation_bits:  # IMX500-only: MCT's Keras model is all that can be measured
        return _scored(scoring, {"keras_quantized": quantized.model}, {}, "keras_quantized", imx500_only=True), None
    exported = ctx.stage(
        Stage.EXPORT, attempt=number, export_format=config.export_format, extra_exports=config.extra_exports
    ).run(export.run, inputs, loaded, drawn, quantized)
    deliverable = exported.models["tflite_quantized"]
    if baseline.exported.models["tflite_quantized"].census.get("integer_only") and not deliverable.census.get(
        "integer_only"
    ):
        return {"outcome": "failed", "detail": "model_quantized.tflite is no longer fully integer"}, None
    packaged = None
    if inputs.imx500_converter is not None:
        packaged = ctx.stage(Stage.IMX500, attempt=number).run(imx500_package.run, inputs.imx500_converter, exported)
    keras = {"keras_quantized": quantized.model}
    tflite = {"tflite_quantized": deliverable.staged}
    figures = _scored(scoring, keras, tflite, "tflite_quantized")
    evaluation = figures.pop("evaluation", None)  # every image's, where it was evaluated on them
    if figures["outcome"] != "within_budget" or evaluation is None:
        return figures, None
    merged = _merged(baseline.evaluation, evaluation)
    return figures, Produced(config, drawn, quantized, exported, merged, packaged)


def _scored(
    scoring: _Scoring, keras: dict[str, Any], tflite: dict[str, Any], scored: str, imx500_only: bool = False
) -> dict[str, Any]:
    """Subset first; every evaluation image where the subset leaves the gate within reach."""
    gate = scoring.metric
    budget = gate.budget
    subset = scoring.subset_scores(keras, tflite)
    subset_score = gate.of(subset.tally, scored)
    figures: dict[str, Any] = {"subset_score": subset_score}
    subset_drop = gate.drop(scoring.reference_subset, subset_score)
    if subset_drop > budget + scoring.slack() and not scoring.subset_is_everything:
        return {**figures, "outcome": "imx500_only" if imx500_only else "rejected_on_subset"}
    full = subset if scoring.subset_is_everything else scoring.full_scores(keras, tflite)
    drop = gate.drop(scoring.reference, gate.of(full.tally, scored))
    figures |= {
        "score": gate.of(full.tally, scored),
        "keras_quantized_score": gate.of(full.tally, "keras_quantized"),
        "drop": drop,
    }
    if imx500_only:
        return {**figures, "outcome": "imx500_only"}
    return {**figures, "outcome": "within_budget" if drop <= budget else "over_budget", "evaluation": full}


def _merged(baseline: Evaluation, attempt: Evaluation) -> Evaluation:
    """The baseline's evaluation with the attempt's scores of the models it evaluated again."""
    tally = copy.copy(baseline.tally)
    if hasattr(tally, "detections"):  # detection: the attempt's detections, the figures computed again
        tally.detections = {name: attempt.tally.detections.get(name, d) for name, d in tally.detections.items()}
        tally._metrics = {}  # noqa: SLF001 - the copy must not keep the baseline's cached figures
    else:
        tally.scores = {name: attempt.tally.scores.get(name, score) for name, score in baseline.tally.scores.items()}
    return replace(
        baseline,
        tally=tally,
        seconds={**baseline.seconds, **attempt.seconds},
        latencies={**baseline.latencies, **attempt.latencies},
    )


def _restaged(exported: Exported, staging: artifacts.Staging) -> Exported:
    """The winner's files where the run's staging area now holds them."""
    return replace(
        exported, files={name: replace(f, staged=staging.pending[f.final]) for name, f in exported.files.items()}
    )
