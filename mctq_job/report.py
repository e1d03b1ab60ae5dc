"""Stage ``report``: results.json and manifest.json built from the stages' values (pure functions).

Both are the models of :mod:`mctq_job.results`, their one definition: constructing them
validates what the stages found against the published schema. results.json keeps the
notebook's four ``top_1_accuracy_*`` keys first, then what the notebook never had: top-5,
per-class accuracy, confusion matrices, agreement between the models' predictions, sizes,
latency, MCT's resource utilization and the accuracy gate.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .results import (
    AGREEMENT_PAIRS,
    GATE_CANDIDATE,
    GATE_REFERENCE,
    MANIFEST_VERSION,
    RESULTS_VERSION,
    VOLATILE_MANIFEST_FIELDS,
    VOLATILE_RESULT_FIELDS,
    Agreement,
    DiagnosisResult,
    Gate,
    Manifest,
    ModelResult,
    PerClass,
    RecoveryResult,
    Results,
    Sizes,
    Verdict,
)
from .results import MODELS as MODELS  # noqa: PLC0414 - tests/test_job.py reads it from here
from .tasks import task_for

#: The Keras models evaluated beside the exported TFLite files (those follow, in the export
#: stage's order, each with its own description): results.json name, description.
KERAS_MODELS = {name: MODELS[name] for name in ("keras", "keras_quantized")}

if TYPE_CHECKING:  # the results are plain data: reading them needs no TensorFlow
    from .calibrate import Drawn
    from .config import Config
    from .diagnose import Diagnosis
    from .evaluate import Evaluation
    from .export import Exported
    from .inputs import Inputs
    from .model import ModelInfo
    from .quantize import Quantized
    from .recover import Recovery


@dataclass(frozen=True)
class RunValues:
    """What the stages returned: the report is built from these values alone."""

    config: Config
    inputs: Inputs
    model: ModelInfo
    drawn: Drawn
    quantized: Quantized
    exported: Exported
    evaluation: Evaluation
    imx500: dict[str, Any] | None = None  # the IMX500 converter's memory facts, where a package was made
    diagnosis: Diagnosis | None = None  # the layer-by-layer comparison, unless diagnosis.images is 0
    recovery: Recovery | None = None  # what recovery tried, where it ran


def results(values: RunValues) -> Results:
    """results.json: the notebook's four keys first, then everything else the stages found.
    Raises pydantic.ValidationError where a stage's value does not fit the published schema."""
    config, evaluation = values.config, values.evaluation
    if config.task == "detection":
        return detection_results(values)
    tally = evaluation.tally
    return Results(
        **{f"top_1_accuracy_{name}": tally.accuracy(name) for name in MODELS},
        **_shared(values),
        task=task_for(config).name,
        class_count=int(len(set(tally.labels.tolist()))),
        gate=gate({name: tally.accuracy(name) for name in MODELS}, config.max_top1_drop),
        models={name: _model_details(values, name, text) for name, text in evaluated(values).items()},
        agreement=agreement(evaluation),
        diagnosis=_diagnosis(values.diagnosis),
        verdict=verdict(evaluation, values.diagnosis),
        recovery=_recovery(values.recovery),
        volatile_fields=list(VOLATILE_RESULT_FIELDS),
    )


def _shared(values: RunValues) -> dict[str, Any]:
    """The fields of results.json every task has, from the run's values."""
    config, evaluation, tflite = values.config, values.evaluation, values.exported.models
    skipped = [*values.inputs.skipped, *values.quantized.skipped_images, *evaluation.skipped]
    return {
        "results_version": RESULTS_VERSION,
        "image_count": evaluation.image_count,
        "classes": dict(sorted(values.inputs.truth.labels.items(), key=lambda item: item[1])),
        "target_platform": config.target_platform,
        "seed": config.seed,
        "quantization": config.quantization_settings(),
        "calibration": values.drawn.facts(),
        "skipped_images": [{"path": str(path), "reason": reason} for path, reason in skipped],
        "sizes": sizes(values.model.parameters, tflite["tflite"].size, tflite["tflite_quantized"].size),
        "resource_utilization": values.quantized.resource_utilization,
        "quantized_io": {"type": config.quantized_io, **tflite["tflite_quantized"].io},
        "imx500": values.imx500,
    }


#: Evaluation images whose boxes results.json keeps for the report, and the models drawn on them.
DETECTION_SAMPLES = 4
SAMPLE_MODELS = ("keras", "tflite_quantized")
SAMPLE_SCORE = 0.3


def detection_results(values: RunValues) -> Results:
    """results.json of a detection run: the four models' mAP keys first, then the detection
    section; the classification-only fields are absent."""
    from .detection_cut import OUTPUTS, deployer_runs

    config, tally = values.config, values.evaluation.tally
    figures = {name: tally.metrics(name) for name in evaluated(values)}
    post = values.model.outputs.get("post_processing") or {}
    truth = tally.truth
    evaluated_images = sorted({int(i) for i in tally.evaluated})
    return Results(
        **{f"map_50_95_{name}": figures[name]["map_50_95"] for name in MODELS},
        **{f"map_50_{name}": figures[name]["map_50"] for name in MODELS},
        **_shared(values),
        task="detection",
        class_count=len({b.label for i in evaluated_images for b in truth.samples[i].boxes}),
        gate=map_gate({name: figures[name]["map_50_95"] for name in MODELS}, config.max_map_drop),
        models={name: _detection_model(values, name, text, figures[name]) for name, text in evaluated(values).items()},
        detection={
            "annotations": truth.source,
            "boxes": sum(len(truth.samples[i].boxes) for i in evaluated_images),
            "post_processing": post,
            "deployer_runs": deployer_runs(post),
            "outputs": OUTPUTS.get(post.get("kind", ""), {}),
            "models": figures,
            "faithfulness": tally.faithfulness(),
            "samples": detection_samples(tally, evaluated_images),
        },
        diagnosis=_diagnosis(values.diagnosis),
        verdict=None,  # a paired interval needs per-image hits, which mAP has not: report.html says so
        recovery=_recovery(values.recovery),
        volatile_fields=list(VOLATILE_RESULT_FIELDS),
    )


def _detection_model(values: RunValues, name: str, description: str, figures: dict[str, Any]) -> ModelResult:
    exported = values.exported.models.get(name)
    return ModelResult(
        description=description,
        **_model_facts(values, name),
        map_50_95=figures["map_50_95"],
        map_50=figures["map_50"],
        outputs=exported.outputs if exported else None,
    )


def detection_samples(tally: Any, evaluated_images: list[int], count: int = DETECTION_SAMPLES) -> list[dict[str, Any]]:
    """The first ``count`` evaluated images with boxes: their ground truth and the confident
    detections of :data:`SAMPLE_MODELS`, in pixels of the original image."""
    from .tasks.detection import IMAGE, LABEL, SCORE, H, X

    truth = tally.truth
    chosen = [i for i in evaluated_images if truth.samples[i].boxes and truth.samples[i].size][:count]
    rows = {name: tally.detections[name].rows() for name in SAMPLE_MODELS if name in tally.detections}
    samples = []
    for index in chosen:
        sample = truth.samples[index]
        found = {}
        for name, table in rows.items():
            mine = table[(table[:, IMAGE] == index) & (table[:, SCORE] >= SAMPLE_SCORE)]
            found[name] = [
                {
                    "label": int(r[LABEL]),
                    "box": [round(float(v), 1) for v in r[X : H + 1]],
                    "score": round(float(r[SCORE]), 4),
                }
                for r in mine
            ]
        samples.append(
            {
                "image": str(sample.path),
                "width": sample.size[0],
                "height": sample.size[1],
                "truth": [
                    {"label": b.label, "box": [round(v, 1) for v in (b.x, b.y, b.width, b.height)], "score": None}
                    for b in sample.boxes
                ],
                "detections": found,
            }
        )
    return samples


def map_gate(maps: dict[str, float | None], max_drop: float | None) -> Gate | None:
    """The mAP gate's verdict (``max_map_drop``), or None without a gate: the fraction of the
    reference's mAP@[.5:.95] the candidate loses."""
    if max_drop is None:
        return None
    reference, candidate = maps[GATE_REFERENCE] or 0.0, maps[GATE_CANDIDATE] or 0.0
    drop = round((reference - candidate) / reference, 12) if reference > 0 else 0.0
    drop = max(-1.0, min(1.0, drop))
    return Gate(
        reference=GATE_REFERENCE,
        candidate=GATE_CANDIDATE,
        map_drop=drop,
        max_map_drop=max_drop,
        passed=drop <= max_drop,
    )


def evaluated(values: RunValues) -> dict[str, str]:
    """Every evaluated model in report order, with its description: the Keras models, then the
    exported TFLite files."""
    exported = {name: file.description for name, file in values.exported.models.items()}
    return {**KERAS_MODELS, **exported}


def _model_details(values: RunValues, name: str, description: str) -> ModelResult:
    tally = values.evaluation.tally
    score = tally.scores[name]
    predicted = score.predicted()
    return ModelResult(
        description=description,
        **_model_facts(values, name),
        correct=score.correct,
        top_1_accuracy=tally.accuracy(name),
        top_5_accuracy=tally.top5_accuracy(name),
        per_class=per_class(tally.labels, predicted, values.inputs.truth.labels),
        confusion=confusion(tally.labels, predicted),
    )


def _model_facts(values: RunValues, name: str) -> dict[str, Any]:
    """What results.json says of one evaluated model whatever the task: its file, its
    evaluation speed and latency, and the TFLite file's operators and I/O."""
    evaluation = values.evaluation
    exported = values.exported.models.get(name)
    return {
        "file": str(exported.final) if exported else None,
        "bytes": exported.size if exported else None,
        "inference": {
            "batch_size": evaluation.batch_size,
            "threads": evaluation.threads,
            "ms_per_image": round(1000 * evaluation.seconds[name] / evaluation.image_count, 3),
        },
        "latency": evaluation.latencies.get(name),
        "census": exported.census if exported else None,
        "io": exported.io if exported else None,
    }


def _diagnosis(diagnosis: Diagnosis | None) -> DiagnosisResult | None:
    if diagnosis is None:
        return None
    return DiagnosisResult(
        images=diagnosis.images,
        seconds=diagnosis.seconds,
        layers=diagnosis.layers,
        findings=[
            {"kind": f.kind, "layer": f.layer, "evidence": f.evidence, "suggestion": f.suggestion}
            for f in diagnosis.findings
        ],
        unmapped=[{"holder": holder, "reason": reason} for holder, reason in diagnosis.unmapped],
    )


def verdict(evaluation: Evaluation, diagnosis: Diagnosis | None) -> Verdict:
    """The drop from the gate's reference to its candidate, with its 95 % interval from the
    per-image hits, and the culprits the diagnosis names."""
    from . import verdict as verdicts

    tally = evaluation.tally
    labels = tally.labels
    table = verdicts.Paired.of(
        tally.scores[GATE_REFERENCE].predicted() == labels, tally.scores[GATE_CANDIDATE].predicted() == labels
    )
    drop, low, high = verdicts.drop_interval(table)
    blamed = []
    if diagnosis is not None and drop > 0:
        layers = [(row["layer"], row["sqnr_db"], row.get("tflite_sqnr_db")) for row in diagnosis.layers]
        blamed = verdicts.culprits(layers, [(f.layer, f.kind) for f in diagnosis.findings])
    return Verdict(
        reference=GATE_REFERENCE,
        candidate=GATE_CANDIDATE,
        images=table.images,
        reference_only_correct=table.reference_only,
        candidate_only_correct=table.candidate_only,
        top_1_drop=round(drop, 12),
        low=round(low, 6),
        high=round(high, 6),
        confidence=0.95,
        measurable=low > 0,
        culprits=[{"layer": layer, "reason": reason} for layer, reason in blamed],
    )


def _recovery(recovery: Recovery | None) -> RecoveryResult | None:
    if recovery is None:
        return None
    name = recovery.metric.name  # top_1 (classification) or map_50_95 (detection)
    budget = "max_top1_drop" if name == "top_1" else "max_map_drop"
    return RecoveryResult(
        metric=name,
        **{
            budget: recovery.metric.budget,
            f"reference_{name}": recovery.reference,
            f"reference_subset_{name}": recovery.reference_subset,
            f"baseline_{name}": recovery.baseline,
            f"baseline_subset_{name}": recovery.baseline_subset,
        },
        max_attempts=recovery.max_attempts,
        max_seconds=recovery.max_seconds,
        subset_images=recovery.subset_images,
        attempts=[attempt.record() for attempt in recovery.attempts],
        winner=recovery.winner,
        best=recovery.best,
        stopped=recovery.stopped,
        seconds=recovery.seconds,
        not_tried=[{"fix": fix, "reason": reason} for fix, reason in recovery.not_tried],
    )


def per_class(labels: np.ndarray, predicted: np.ndarray, classes: dict[str, int]) -> dict[str, PerClass]:
    """Top-1 accuracy of each class that has evaluation images, by class name."""
    table = {}
    for name, label in sorted(classes.items(), key=lambda item: item[1]):
        mine = labels == label
        images = int(mine.sum())
        if images:
            correct = int((predicted[mine] == label).sum())
            table[name] = PerClass(label=label, images=images, correct=correct, top_1_accuracy=correct / images)
    return table


def confusion(labels: np.ndarray, predicted: np.ndarray) -> list[tuple[int, int, int]]:
    """The confusion matrix as sorted (true label, predicted label, count) triples, zeros left out:
    the same for 10 classes or 1,000."""
    if not len(labels):
        return []
    pairs, counts = np.unique(np.stack([labels, predicted], axis=1), axis=0, return_counts=True)
    return [(int(t), int(p), int(n)) for (t, p), n in zip(pairs, counts, strict=True)]


def agreement(evaluation: Evaluation) -> Agreement:
    """Fraction of images on which two models predict the same class, right or wrong."""
    predicted = {name: evaluation.tally.scores[name].predicted() for name in MODELS}
    return Agreement(**{f"{a}_vs_{b}": float(np.mean(predicted[a] == predicted[b])) for a, b in AGREEMENT_PAIRS})


def sizes(keras_parameters: int, tflite_bytes: int, tflite_quantized_bytes: int) -> Sizes:
    return Sizes(
        keras_parameters=keras_parameters,
        tflite_bytes=tflite_bytes,
        tflite_quantized_bytes=tflite_quantized_bytes,
        quantized_to_float_ratio=round(tflite_quantized_bytes / tflite_bytes, 4),
    )


def gate(accuracies: dict[str, float], max_drop: float | None) -> Gate | None:
    """The accuracy gate's verdict, or None without a gate. Passes when the drop is at most
    ``max_drop`` (rounded to 12 digits: 0.98 - 0.96 must not fail a 0.02 gate)."""
    if max_drop is None:
        return None
    drop = round(accuracies[GATE_REFERENCE] - accuracies[GATE_CANDIDATE], 12)
    return Gate(
        reference=GATE_REFERENCE,
        candidate=GATE_CANDIDATE,
        top_1_drop=drop,
        max_top1_drop=max_drop,
        passed=drop <= max_drop,
    )


def manifest(
    *,
    run_id: str,
    started_at: str,
    finished_at: str,
    config_file: str,
    config_doc: dict[str, Any],
    config_sha256: str,
    versions: dict[str, str],
    stage_seconds: dict[str, float],
    peak_memory_bytes: int,
    artifacts: list[dict[str, Any]],
    outcome: str,
) -> Manifest:
    """manifest.json. Raises pydantic.ValidationError where a value does not fit the published schema."""
    return Manifest(
        manifest_version=MANIFEST_VERSION,
        outcome=outcome,
        run_id=run_id,
        started_at=started_at,
        finished_at=finished_at,
        versions={**versions, "python": platform.python_version(), "platform": platform.platform()},
        config_file=config_file,
        config=config_doc,
        config_sha256=config_sha256,
        seed=config_doc.get("seed"),
        stage_seconds=stage_seconds,
        peak_memory_bytes=peak_memory_bytes,
        artifacts=artifacts,
        volatile_fields=list(VOLATILE_MANIFEST_FIELDS),
    )
