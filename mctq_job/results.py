"""results.json and manifest.json: their one definition, as pydantic models.

The job writes both files from these models (:mod:`mctq_job.report` builds them from the
stages' values); report.html, the command line's summary, the gates and
``k8s/collect_results.py`` read them through them; ``mctq-job schema --results`` and
``--manifest`` print their JSON Schema, and docs/outputs.md's field tables are generated here.

``Results.read(path)`` and ``Manifest.read(path)`` parse a file; ``.document()`` gives the
JSON-ready dict the job writes: the fields in the order below (results.json keeps the AITRIOS
notebook's four ``top_1_accuracy_*`` keys first), nulls where a value is absent.

Importing this module imports pydantic and the configuration's schema only: no TensorFlow,
MCT or numpy, so a reader can use it wherever the package is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from .config import (
    QUANTIZATION_METHODS,
    Activations,
    Config,
    ExportFormat,
    Gptq,
    MixedPrecision,
    Qat,
    QuantizedIO,
    TargetPlatform,
    TpcVersion,
)
from .errors import AccuracyGateError, Imx500NotFitError

#: results.json's layout version: bumped where a field's meaning changes (not for added fields).
RESULTS_VERSION = 2
MANIFEST_VERSION = 1
#: What the evaluation measured: the kind of model and metrics. ``task`` in results.json.
TASKS = ("classification", "detection")
Task = Literal[TASKS]  # type: ignore[valid-type]
#: The notebook's four models, whose top-1 accuracies open results.json, in this order:
#: results.json name -> description. ``models`` has them and any extra export (``extra_exports``).
MODELS = {
    "keras": "Keras model (float)",
    "keras_quantized": "MCT's quantized Keras model",
    "tflite": "model.tflite (TensorFlow converter, float)",
    "tflite_quantized": "model_quantized.tflite (quantized by MCT)",
}
#: The AITRIOS notebook's keys, first in results.json.
NOTEBOOK_KEYS = tuple(f"top_1_accuracy_{name}" for name in MODELS)
#: The detection task's keys in their place: COCO mAP@[.5:.95] and mAP@.5 of the four models.
DETECTION_KEYS = tuple(f"map_50_95_{name}" for name in MODELS) + tuple(f"map_50_{name}" for name in MODELS)
#: The accuracy gate compares the deliverable with the model it came from.
GATE_REFERENCE, GATE_CANDIDATE = "keras", "tflite_quantized"
GateReference = Literal[(GATE_REFERENCE,)]  # type: ignore[valid-type]
GateCandidate = Literal[(GATE_CANDIDATE,)]  # type: ignore[valid-type]
#: How a run ended where it published its files: success, or the gate it failed.
OUTCOMES = ("success", AccuracyGateError.kind, Imx500NotFitError.kind)
Outcome = Literal[OUTCOMES]  # type: ignore[valid-type]
#: results.json fields that differ between two runs of the same inputs and seed.
VOLATILE_RESULT_FIELDS = (
    "models.*.inference",
    "models.*.latency",
    "diagnosis.seconds",
    "recovery.seconds",
    "recovery.attempts.*.seconds",
)
#: How a recovery attempt ended, and why recovery stopped (mctq_job.recover's, repeated here so
#: that reading results.json needs no TensorFlow; tests/test_recover.py checks they agree).
ATTEMPT_OUTCOMES = ("within_budget", "over_budget", "rejected_on_subset", "imx500_only", "not_applicable", "failed")
RECOVERY_STOPS = ("within_budget", "max_attempts", "max_seconds", "candidates_exhausted")
#: manifest.json fields that differ between two runs of the same inputs and seed.
VOLATILE_MANIFEST_FIELDS = (
    "run_id",
    "started_at",
    "finished_at",
    "stage_seconds",
    "peak_memory_bytes",
    "config_file",
    "versions.platform",
)

Share = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]


class _Part(BaseModel):
    """Every object in the two files: no key beyond the declared ones, read-only once made."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Fields written only where they hold a value (absent, not null, otherwise): the fields of
    #: one task that the other task has no figure for, and the TFLite files' own facts.
    _absent_when_null: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self._absent_when_null:
            if data.get(key, 0) is None:
                del data[key]
        return data

    def document(self) -> dict[str, Any]:
        """The JSON-ready dict, as written to the file."""
        return self.model_dump(mode="json")


# --- results.json -------------------------------------------------------------------------


class QuantizationSettings(_Part):
    """The quantization options in effect (the configuration's, defaults filled in)."""

    target_platform: TargetPlatform = Field(description="MCT target platform.")
    target_platform_version: TpcVersion = Field(description="Its TPC version.")
    method: Literal[QUANTIZATION_METHODS] = Field(  # type: ignore[valid-type]
        description="The configuration's `quantization_method`."
    )
    gptq: Gptq | None = Field(description="The GPTQ options in effect with `gptq`, else null.")
    qat: Qat | None = Field(
        None, description="The QAT options in effect with `qat`, else null; absent in files written before it existed."
    )
    mixed_precision: MixedPrecision | None = Field(description="The mixed-precision options, or null.")
    activations: Activations | None = Field(
        None, description="How MCT picked activation ranges (`activations`); absent in files written before it existed."
    )
    export_format: ExportFormat = Field(description="How model_quantized.tflite was written.")
    quantized_io: QuantizedIO = Field(description="model_quantized.tflite's input and output type.")


class Calibration(_Part):
    batches: Count = Field(description="Calibration batches fed to MCT (`iteration_count`).")
    batch_size: Count = Field(description="Images per batch.")
    images_available: Count = Field(description="Calibration images found in `dataset_image_dir`.")
    distinct_images_drawn: Count = Field(description="Different images among those drawn.")


class SkippedImage(_Part):
    path: str = Field(description="The image file.")
    reason: str = Field(description="Why it could not be used.")


class Sizes(_Part):
    keras_parameters: Count = Field(description="Parameters of the Keras model.")
    tflite_bytes: Count = Field(description="Size of model.tflite.")
    tflite_quantized_bytes: Count = Field(description="Size of model_quantized.tflite.")
    quantized_to_float_ratio: float = Field(gt=0, description="The two sizes' ratio, 4 decimals.")


class ResourceRecord(_Part):
    """MCT's ResourceUtilization; null where MCT reports it unbounded."""

    weights_memory: float | None = Field(description="Weights memory, bytes.")
    activation_memory: float | None = Field(description="Activation memory, bytes.")
    total_memory: float | None = Field(description="Weights plus activation memory, bytes.")
    bops: float | None = Field(description="Bit-operations.")


class ResourceUtilization(_Part):
    float_8bit: ResourceRecord = Field(description="The float model at 8 bits everywhere.")
    final: ResourceRecord | None = Field(description="The quantized model under mixed precision; null without it.")


class Gate(_Part):
    """The accuracy gate's verdict."""

    reference: GateReference = Field(description="The model the drop is measured from.")
    candidate: GateCandidate = Field(description="The model the drop is measured to.")
    _absent_when_null = frozenset({"top_1_drop", "max_top1_drop", "map_drop", "max_map_drop"})

    top_1_drop: float | None = Field(
        None, ge=-1, le=1, description="Reference top-1 minus candidate top-1 (negative: a gain); classification."
    )
    max_top1_drop: Share | None = Field(None, description="The largest drop allowed (`max_top1_drop`); classification.")
    map_drop: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Detection: the fraction of the reference's mAP@[.5:.95] the candidate loses, "
        "(reference - candidate) / reference (negative: a gain).",
    )
    max_map_drop: Share | None = Field(None, description="Detection: the largest fraction allowed (`max_map_drop`).")
    passed: bool = Field(description="Whether the drop is at most the allowed one.")


class TensorQuantization(_Part):
    dtype: str = Field(description="numpy name of the tensor's type: `float32`, `int8`, `uint8`.")
    scale: float = Field(ge=0, description="Quantization scale; 0.0 for a float tensor.")
    zero_point: int = Field(description="Quantization zero point; 0 for a float tensor.")


class Io(_Part):
    """A TFLite file's first input and first output."""

    input: TensorQuantization = Field(description="The input tensor.")
    output: TensorQuantization = Field(description="The output tensor.")


class QuantizedIo(_Part):
    type: QuantizedIO = Field(description="The configuration's `quantized_io`.")
    input: TensorQuantization = Field(description="The input tensor of model_quantized.tflite.")
    output: TensorQuantization = Field(description="The output tensor of model_quantized.tflite.")


class Imx500Facts(_Part):
    """What the IMX500 converter's memory report says about the package."""

    converter_version: str = Field(description="The converter's version.")
    fit_in_chip: bool = Field(description="Whether the model fits the chip's memory.")
    memory_usage: str = Field(description="Memory usage as the report writes it (e.g. `94.00KB`).")
    memory_usage_bytes: Count = Field(description="Runtime + model + reserved memory, bytes.")
    model_memory_bytes: Count = Field(description="Weights and program, bytes.")
    runtime_memory_bytes: Count = Field(description="Activations, bytes.")
    reserved_memory_bytes: Count = Field(description="Reserved memory, bytes.")
    total_memory_bytes: Count = Field(description="Memory available on the chip, bytes.")
    utilization: float | None = Field(
        ge=0, description="Usage over available memory (above 1: does not fit); null if none is available."
    )


class PerClass(_Part):
    label: int = Field(description="The class's label.")
    images: Count = Field(description="Its evaluation images.")
    correct: Count = Field(description="Those the model got right (top-1).")
    top_1_accuracy: Share = Field(description="`correct` / `images`.")


#: One cell of a sparse confusion matrix: [true label, predicted label, image count].
ConfusionTriple = tuple[int, int, int]


class Inference(_Part):
    """The evaluation's batched inference."""

    batch_size: Count = Field(description="Images per call.")
    threads: Count = Field(description="CPU threads used.")
    ms_per_image: float = Field(ge=0, description="Milliseconds per image.")


class Latency(_Part):
    """One image per call, after warm-up calls."""

    batch_size: Count = Field(description="Images per call: 1.")
    threads: Count = Field(description="CPU threads used.")
    warmup_runs: Count = Field(description="Calls before the timed ones.")
    runs: Count = Field(description="Timed calls.")
    median_ms: float = Field(ge=0, description="Median milliseconds per call.")
    p90_ms: float = Field(ge=0, description="90th percentile, milliseconds.")


class Census(_Part):
    """The operators of a TFLite file and what they compute in."""

    operators: dict[str, Count] = Field(
        description='Count of each operator by the type of its first input, e.g. `"CONV_2D/int8"`.'
    )
    integer_only: bool = Field(
        description="No operator between input and output computes in float (the QUANTIZE of a "
        "float input and the DEQUANTIZE of a float output excepted)."
    )
    runtime_weight_reshapes: Count = Field(
        description="Operators that reshape weights at every inference (work a converter could do once)."
    )


class OutputQuantization(TensorQuantization):
    """One named output of a detector's cut TFLite file (read it by this name through the file's signature)."""

    _absent_when_null = frozenset({"computed_as"})

    shape: list[int] = Field(description="Its shape (batch 1).")
    computed_as: TensorQuantization | None = Field(
        None,
        description="Where the output is float (`quantized_io` float): the integer tensor it is dequantized from, "
        "the grid the network computes it on (absent otherwise).",
    )


class ModelResult(_Part):
    """One evaluated model."""

    _absent_when_null = frozenset(
        {"census", "io", "outputs", "correct", "top_1_accuracy", "top_5_accuracy", "per_class", "confusion"}
        | {"map_50_95", "map_50"}
    )

    description: str = Field(description="What the model is.")
    file: str | None = Field(description="Its published file; null for the in-memory Keras models.")
    bytes: Count | None = Field(description="That file's size; null without a file.")
    correct: Count | None = Field(None, description="Classification: evaluation images it got right (top-1).")
    top_1_accuracy: Share | None = Field(None, description="Classification: top-1 accuracy.")
    top_5_accuracy: Share | None = Field(None, description="Classification: top-5 accuracy.")
    per_class: dict[str, PerClass] | None = Field(
        None, description="Classification: top-1 accuracy of each class with evaluation images."
    )
    confusion: list[ConfusionTriple] | None = Field(
        None,
        description="Classification: sparse confusion matrix, `[true, predicted, count]` triples, sorted, zeros "
        "left out.",
    )
    map_50_95: Share | None = Field(None, description="Detection: COCO mAP@[.5:.95] (pycocotools).")
    map_50: Share | None = Field(None, description="Detection: COCO mAP@.5 (pycocotools).")
    inference: Inference = Field(description="Speed of the evaluation (batched).")
    latency: Latency = Field(description="Single-image latency.")
    census: Census | None = Field(None, description="TFLite files only (the key is absent otherwise).")
    io: Io | None = Field(None, description="TFLite files only: input and output quantization.")
    outputs: dict[str, OutputQuantization] | None = Field(
        None,
        description="Detection, TFLite files only: every output of the file by its signature name (the network "
        "cut before the post-processing), with its own quantization.",
    )


class Agreement(_Part):
    """Share of the evaluation images on which two models predict the same class, right or wrong."""

    keras_vs_keras_quantized: Share = Field(description="The Keras model against MCT's quantized one.")
    tflite_vs_tflite_quantized: Share = Field(description="The two TFLite files.")
    keras_vs_tflite_quantized: Share = Field(description="The Keras model against the deliverable.")
    keras_vs_tflite: Share = Field(description="The Keras model against its float conversion.")
    keras_quantized_vs_tflite_quantized: Share = Field(
        description="MCT's quantized Keras model against its TFLite export."
    )


Decibels = Annotated[float, Field(allow_inf_nan=False)]


class SliceDiagnosis(_Part):
    """One input of a concatenation: its channels of the concatenated tensor."""

    input: str = Field(description="The user's layer feeding this input.")
    sqnr_db: Decibels | None = Field(description="SQNR of these channels alone, dB; null where identical.")
    max_abs: float = Field(ge=0, description="Largest magnitude of the float values in these channels.")


class LayerDiagnosis(_Part):
    """One tensor MCT quantizes, named by the user's layer whose output it is."""

    layer: str = Field(
        description="The user's layer (a BatchNormalization folded into its convolution keeps its name)."
    )
    kind: Literal["input", "output", "folded", "pre-activation"] = Field(
        description="`output` of the layer; `input` of the model; `folded`: a convolution with the "
        "BatchNormalization MCT folded into it; `pre-activation`: before an activation MCT quantizes apart."
    )
    sqnr_db: Decibels | None = Field(
        description="Cumulative SQNR, dB: the float model's tensor against MCT's quantized model's, "
        "all the error of the layers before included; null where identical."
    )
    local_sqnr_db: Decibels | None = Field(
        description="Local SQNR, dB: the error this layer adds by itself (its weights and activation "
        "quantized, float inputs); null where identical."
    )
    activation_sqnr_db: Decibels | None = Field(
        description="The activation quantizer alone on the float tensor, dB; null where identical."
    )
    tflite_compared: bool = Field(
        False,
        description="Whether model_quantized.tflite's tensor was read and compared (the interpreter does not "
        "expose a tensor that a later operator overwrites in place, e.g. the logits before a softmax).",
    )
    tflite_sqnr_db: Decibels | None = Field(
        None,
        description="Cumulative SQNR of model_quantized.tflite's tensor against the float model's, dB; null "
        "where not compared (`tflite_compared`) or identical. Far below `sqnr_db`: the export departs from MCT.",
    )
    clipped_share: Share = Field(
        description="Share of the float values of the evaluation images more than one quantization step "
        "outside the calibrated range (within a step, clipping is no worse than rounding)."
    )
    calibration_clipped_share: Share | None = Field(
        None,
        description="The same share on as many of the calibration batches' images; null where not measured.",
    )
    max_abs: float = Field(ge=0, description="Largest magnitude of the float values.")
    p999_abs: float | None = Field(description="Largest per-batch 99.9th percentile of the magnitudes.")
    slices: list[SliceDiagnosis] = Field(description="For a concatenation: each input's channels.")


#: The kinds of finding, in the order the diagnosis looks for them.
FINDING_KINDS = (
    "calibration_classes_missing",
    "unbalanced_concatenation",
    "activation_outlier",
    "outlier_channel",
    "calibration_mismatch",
    "weight_channel_outlier",
)
FindingKind = Literal[FINDING_KINDS]  # type: ignore[valid-type]


class FindingResult(_Part):
    """Something in the model that costs accuracy when quantized, with its evidence."""

    kind: FindingKind = Field(
        description="`unbalanced_concatenation`: inputs whose ranges differ by more than 16x share one scale; "
        "`activation_outlier`: a maximum far above the 99.9th percentile stretches the range; "
        "`outlier_channel`: one channel far above the others stretches the per-tensor range; "
        "`calibration_mismatch`: the calibrated range clips at least 1 % of the evaluation images' values "
        "(by more than a step), and at least 4x the calibration images' share; "
        "`calibration_classes_missing`: the calibration folder has class sub-folders named like the label "
        "file and the drawn calibration batches miss some classes (named at the model's input); "
        "`weight_channel_outlier`: weights the target quantizes per tensor whose range one output channel "
        "dominates (more than 16x the median channel's)."
    )
    layer: str = Field(description="The user's layer.")
    evidence: dict[str, Any] = Field(description="The numbers behind it (ratios, ranges, SQNR).")
    suggestion: str = Field(description="What to try.")


class UnmappedHolder(_Part):
    holder: str = Field(description="MCT's activation quantizer that has no float counterpart.")
    reason: str = Field(description="Why.")


class DiagnosisResult(_Part):
    """Where the quantized model departs from the float one (``diagnosis.images`` > 0)."""

    images: Count = Field(description="Evaluation images compared (a fixed subset drawn with `seed`).")
    seconds: float = Field(ge=0, description="Time the comparison took.")
    layers: list[LayerDiagnosis] = Field(description="Every quantized tensor, in graph order.")
    findings: list[FindingResult] = Field(description="What looks wrong, with evidence and a suggestion.")
    unmapped: list[UnmappedHolder] = Field(description="Quantized tensors with no float counterpart.")


class Culprit(_Part):
    layer: str = Field(description="The user's layer.")
    reason: str = Field(
        description="A finding's kind; `export` where model_quantized.tflite's SQNR falls 10 dB or more below "
        "MCT's model's; `sqnr_fall` where no finding names a layer and MCT's cumulative SQNR falls most "
        "(10 dB or more)."
    )


class Verdict(_Part):
    """The top-1 drop from the Keras model to model_quantized.tflite, with a 95 % interval from the
    paired per-image predictions (Newcombe's hybrid score interval for paired proportions)."""

    reference: GateReference = Field(description="The model the drop is measured from.")
    candidate: GateCandidate = Field(description="The model the drop is measured to.")
    images: Count = Field(description="Evaluation images both models were scored on.")
    reference_only_correct: Count = Field(description="Images the reference gets right and the candidate wrong.")
    candidate_only_correct: Count = Field(description="Images the candidate gets right and the reference wrong.")
    top_1_drop: float = Field(ge=-1, le=1, description="Reference top-1 minus candidate top-1 (negative: a gain).")
    low: float = Field(ge=-1, le=1, description="Lower end of the 95 % interval of the drop.")
    high: float = Field(ge=-1, le=1, description="Upper end of the 95 % interval of the drop.")
    confidence: float = Field(ge=0.95, le=0.95, description="The interval's confidence level: 0.95.")
    measurable: bool = Field(description="Whether the interval lies above 0: a drop chance does not explain.")
    culprits: list[Culprit] = Field(
        description="The layers the diagnosis blames for the drop (empty without a drop, without a diagnosis, "
        "or where nothing stands out)."
    )


class RecoveryAttempt(_Part):
    """One re-quantization tried by the recovery."""

    _absent_when_null: ClassVar[frozenset[str]] = frozenset(
        {"subset_map_50_95", "map_50_95", "keras_quantized_map_50_95", "map_drop"}
    )

    attempt: int = Field(ge=1, description="Its number, from 1.")
    description: str = Field(description="The fix, in words.")
    reason: str = Field(description="Why it was tried: the findings it answers.")
    change: dict[str, Any] = Field(description="The configuration keys it set (merged into the configuration).")
    activation_bits: dict[str, int] | None = Field(
        description="IMX500-only attempts: activation bit widths by layer (no configuration key holds them)."
    )
    outcome: Literal[ATTEMPT_OUTCOMES] = Field(  # type: ignore[valid-type]
        description="`within_budget` (published), `over_budget`, `rejected_on_subset` (far outside the gate on "
        "the subset), `imx500_only` (16-bit activations: measured on MCT's Keras model, no TFLite file can carry "
        "them), `not_applicable` (MCT refused the setting here), `failed` (a tool failed, or the file was no "
        "longer fully integer)."
    )
    subset_top_1: Share | None = Field(
        None, description="Top-1 of model_quantized.tflite (MCT's Keras model where IMX500-only) on the subset."
    )
    top_1: Share | None = Field(None, description="The same on every evaluation image; null where not evaluated.")
    keras_quantized_top_1: Share | None = Field(
        None, description="MCT's quantized Keras model on every evaluation image."
    )
    top_1_drop: float | None = Field(None, ge=-1, le=1, description="The Keras model's top-1 minus `top_1`.")
    subset_map_50_95: Share | None = Field(
        None,
        description="Detection (absent for classification): mAP@[.5:.95] of model_quantized.tflite (MCT's Keras "
        "model where IMX500-only) on the subset.",
    )
    map_50_95: Share | None = Field(
        None, description="Detection: the same on every evaluation image; null where not evaluated."
    )
    keras_quantized_map_50_95: Share | None = Field(
        None, description="Detection: MCT's quantized Keras model's mAP@[.5:.95] on every evaluation image."
    )
    map_drop: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Detection: the gate's drop, (Keras model's mAP@[.5:.95] - `map_50_95`) / Keras model's.",
    )
    seconds: float = Field(ge=0, description="Wall time of the attempt.")
    detail: str | None = Field(description="Why it failed or was not applicable; null otherwise.")


class NotTried(_Part):
    fix: str = Field(description="A fix recovery does not try.")
    reason: str = Field(description="Why.")


class RecoveryResult(_Part):
    """What recovery tried where the gate failed (``recover``), and what it published."""

    _absent_when_null: ClassVar[frozenset[str]] = frozenset(
        {
            "max_map_drop",
            "reference_map_50_95",
            "reference_subset_map_50_95",
            "baseline_map_50_95",
            "baseline_subset_map_50_95",
        }
    )

    metric: Literal["top_1", "map_50_95"] = Field(
        "top_1",
        description="The figure attempts are scored by: `top_1` (classification, the `*_top_1` fields) or "
        "`map_50_95` (detection, mAP@[.5:.95], the `*_map_50_95` fields; its drop is relative, as the gate's).",
    )
    max_top1_drop: Share | None = Field(None, description="The gate it recovers to (classification).")
    max_map_drop: Share | None = Field(None, description="The gate it recovers to (detection).")
    max_attempts: Count = Field(description="`recover.max_attempts`.")
    max_seconds: float = Field(gt=0, description="`recover.max_seconds`.")
    subset_images: Count = Field(description="Evaluation images each attempt is scored on first (the diagnosis').")
    reference_top_1: Share | None = Field(None, description="The Keras model's top-1, every evaluation image.")
    reference_subset_top_1: Share | None = Field(None, description="The Keras model's top-1 on the subset.")
    baseline_top_1: Share | None = Field(
        None, description="model_quantized.tflite's top-1 with the configuration as given."
    )
    baseline_subset_top_1: Share | None = Field(None, description="The same on the subset.")
    reference_map_50_95: Share | None = Field(
        None, description="Detection: the Keras model's mAP@[.5:.95], every evaluation image."
    )
    reference_subset_map_50_95: Share | None = Field(None, description="Detection: the same on the subset.")
    baseline_map_50_95: Share | None = Field(
        None, description="Detection: model_quantized.tflite's mAP@[.5:.95] with the configuration as given."
    )
    baseline_subset_map_50_95: Share | None = Field(None, description="Detection: the same on the subset.")
    attempts: list[RecoveryAttempt] = Field(description="Every attempt, in order.")
    winner: int | None = Field(
        description="The attempt published (its settings in recovered_configuration.json); null: none was within "
        "the gate and the configuration's own models are published."
    )
    best: int | None = Field(
        description="The attempt with the highest top-1 (detection: mAP@[.5:.95]) on every image; null if none."
    )
    stopped: Literal[RECOVERY_STOPS] = Field(  # type: ignore[valid-type]
        description="Why it ended: `within_budget` (a winner), `max_attempts`, `max_seconds` (the next attempt "
        "would likely end after it), `candidates_exhausted`."
    )
    seconds: float = Field(ge=0, description="Wall time of the recovery.")
    not_tried: list[NotTried] = Field(description="Fixes it does not try, and why.")


#: Pairs of models whose per-image top-1 predictions are compared: Agreement's field names.
AGREEMENT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a, _, b in (name.partition("_vs_") for name in Agreement.model_fields)
)


class DetectionFigures(_Part):
    """pycocotools' bounding-box figures of one model; null where nothing could be measured."""

    map_50_95: Share | None = Field(description="mAP@[.5:.95].")
    map_50: Share | None = Field(description="mAP@.5.")
    map_75: Share | None = Field(description="mAP@.75.")
    map_small: Share | None = Field(description="mAP@[.5:.95] of small objects (below 32x32 px).")
    map_medium: Share | None = Field(description="mAP@[.5:.95] of medium objects.")
    map_large: Share | None = Field(description="mAP@[.5:.95] of large objects (above 96x96 px).")
    ar_100: Share | None = Field(description="Average recall with at most 100 detections per image.")
    per_class_ap: dict[str, Share | None] = Field(description="AP@[.5:.95] of each class; null without its boxes.")
    detections: Count = Field(description="Detections scored (at most 100 per image).")


class Faithfulness(_Part):
    """How many of the reference's confident detections the candidate reproduces."""

    reference: str = Field(description="The model whose detections are counted: keras_quantized.")
    candidate: str = Field(description="The model that should reproduce them: tflite_quantized.")
    score_threshold: Share = Field(description="A reference detection counts from this score.")
    iou_threshold: Share = Field(description="Reproduced: same class, overlapping by at least this IoU.")
    detections: Count = Field(description="The reference's detections counted.")
    reproduced: Count = Field(description="Those reproduced.")
    share: Share | None = Field(description="`reproduced` / `detections`; null without detections.")


class SampleBox(_Part):
    label: int = Field(description="The model's class index.")
    box: list[float] = Field(description="[x, y, width, height] in pixels of the original image.")
    score: float | None = Field(description="The detection's score; null for a ground-truth box.")


class DetectionSample(_Part):
    """One evaluation image with its ground truth and some models' detections (score >= 0.3)."""

    image: str = Field(description="The image file.")
    width: Count = Field(description="Its width, pixels.")
    height: Count = Field(description="Its height, pixels.")
    truth: list[SampleBox] = Field(description="Its ground-truth boxes.")
    detections: dict[str, list[SampleBox]] = Field(description="Detections by model (keras, tflite_quantized).")


class DetectionResult(_Part):
    """What the detection task measured beyond the mAP keys."""

    annotations: Literal["coco", "yolo"] = Field(description="The ground truth's format.")
    boxes: Count = Field(description="Ground-truth boxes of the evaluated images.")
    post_processing: dict[str, Any] = Field(
        description="The model's post-processing as the model stage found it: `kind` (`combined_non_max_suppression` "
        "or `SSDPostProcess`), its layer and its parameters."
    )
    deployer_runs: str = Field(
        description="What a deployer runs after the outputs of model.tflite and model_quantized.tflite (the "
        "network is cut before the post-processing): the decoding and NMS, with their parameters."
    )
    outputs: dict[str, str] = Field(description="The cut TFLite files' outputs by signature name, and what each holds.")
    models: dict[str, DetectionFigures] = Field(description="pycocotools' figures of each evaluated model.")
    faithfulness: Faithfulness | None = Field(
        description="keras_quantized's detections reproduced by tflite_quantized; null where not both evaluated."
    )
    samples: list[DetectionSample] = Field(description="A few evaluation images with boxes, for the report.")


class Results(_Part):
    """results.json: accuracies and everything measured about the evaluated models."""

    model_config = ConfigDict(title="mctq-job results.json")
    _absent_when_null = frozenset({*NOTEBOOK_KEYS, *DETECTION_KEYS, "agreement", "detection"})

    top_1_accuracy_keras: Share | None = Field(
        None, description="The notebook's key: top-1 of the Keras model (classification; absent for detection)."
    )
    top_1_accuracy_keras_quantized: Share | None = Field(
        None, description="The notebook's key: MCT's quantized Keras model (classification)."
    )
    top_1_accuracy_tflite: Share | None = Field(None, description="The notebook's key: model.tflite (classification).")
    top_1_accuracy_tflite_quantized: Share | None = Field(
        None, description="The notebook's key: model_quantized.tflite (classification)."
    )
    map_50_95_keras: Share | None = Field(
        None, description="Detection: COCO mAP@[.5:.95] of the Keras model (absent for classification)."
    )
    map_50_95_keras_quantized: Share | None = Field(None, description="Detection: of MCT's quantized Keras model.")
    map_50_95_tflite: Share | None = Field(None, description="Detection: of model.tflite + the post-processing.")
    map_50_95_tflite_quantized: Share | None = Field(
        None, description="Detection: of model_quantized.tflite + the post-processing."
    )
    map_50_keras: Share | None = Field(None, description="Detection: COCO mAP@.5 of the Keras model.")
    map_50_keras_quantized: Share | None = Field(None, description="Detection: of MCT's quantized Keras model.")
    map_50_tflite: Share | None = Field(None, description="Detection: of model.tflite + the post-processing.")
    map_50_tflite_quantized: Share | None = Field(
        None, description="Detection: of model_quantized.tflite + the post-processing."
    )
    results_version: Literal[2] = Field(description="This layout's version.")
    task: Task = Field("classification", description="What was evaluated; absent in files written before it was added.")
    image_count: Count = Field(description="Evaluation images scored (skipped ones excluded).")
    class_count: Count = Field(description="Classes among them.")
    classes: dict[str, int] = Field(description="Every class name with its label, by label.")
    target_platform: TargetPlatform = Field(description="MCT target platform.")
    seed: int = Field(description="The seed the calibration batches were drawn with.")
    quantization: QuantizationSettings = Field(description="The quantization options in effect.")
    calibration: Calibration = Field(description="What calibration used.")
    skipped_images: list[SkippedImage] = Field(description="Images left out (`on_corrupt_image: skip`).")
    sizes: Sizes = Field(description="Model sizes.")
    resource_utilization: ResourceUtilization = Field(description="MCT's resource utilization.")
    gate: Gate | None = Field(description="The accuracy gate's verdict; null without `max_top1_drop`.")
    quantized_io: QuantizedIo = Field(description="Input and output type of model_quantized.tflite.")
    imx500: Imx500Facts | None = Field(description="The IMX500 package's memory facts; null without a package.")
    models: dict[str, ModelResult] = Field(
        description="Each evaluated model, in report order: keras, keras_quantized, then each exported TFLite "
        "file (tflite, tflite_quantized, and tflite_float16 / tflite_dynamic_range with `extra_exports`)."
    )
    agreement: Agreement | None = Field(
        None, description="Classification: agreement between models' predictions (absent for detection)."
    )
    detection: DetectionResult | None = Field(None, description="Detection only: the detection task's figures.")
    diagnosis: DiagnosisResult | None = Field(
        None, description="The layer-by-layer comparison; null with `diagnosis.images` 0, absent before it existed."
    )
    verdict: Verdict | None = Field(
        None, description="The drop with its 95 % interval and the culprits; absent in files written before it existed."
    )
    recovery: RecoveryResult | None = Field(
        None,
        description="What recovery tried; null where it did not run (no `recover`, or the gate passed), absent "
        "before it existed. The other fields describe the published models: the winner's where there is one.",
    )
    volatile_fields: list[str] = Field(description="Fields that differ between two runs of the same inputs and seed.")

    @classmethod
    def read(cls, path: Path | str) -> Results:
        """A results.json file, validated (pydantic.ValidationError where it does not fit)."""
        return cls.model_validate(json.loads(Path(path).read_bytes()))

    def accuracy(self, model: str) -> float:
        """The notebook's top-1 accuracy of one model, by results.json name (classification)."""
        value: float = getattr(self, f"top_1_accuracy_{model}")
        return value

    def notebook_accuracies(self) -> dict[str, float]:
        """The notebook's four keys and their values (classification)."""
        return {key: getattr(self, key) for key in NOTEBOOK_KEYS}

    def headline(self) -> dict[str, float | None]:
        """The task's headline keys and values: the notebook's four top-1 accuracies, or for
        detection the four models' mAP@[.5:.95] and mAP@.5."""
        keys = DETECTION_KEYS if self.task == "detection" else NOTEBOOK_KEYS
        return {key: getattr(self, key) for key in keys}


# --- manifest.json ------------------------------------------------------------------------


class Versions(_Part):
    mctq_job: str = Field(description="mctq-job.")
    tensorflow: str = Field(description="TensorFlow.")
    numpy: str = Field(description="numpy.")
    model_compression_toolkit: str = Field(description="MCT.")
    python: str = Field(description="Python.")
    platform: str = Field(description="The operating system, as Python's `platform.platform()`.")


class ArtifactRecord(_Part):
    path: str = Field(description="Where the file was published.")
    name: str = Field(description="Its file name.")
    size: Count = Field(description="Its size, bytes.")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="Its SHA-256, hex.")


class Manifest(_Part):
    """manifest.json: what the run published, from what, with what."""

    model_config = ConfigDict(title="mctq-job manifest.json")

    manifest_version: Literal[1] = Field(description="This layout's version.")
    outcome: Outcome = Field(description="`success`, or the gate the published run failed.")
    run_id: str = Field(description="This run's id.")
    started_at: str = Field(description="UTC, ISO 8601 with milliseconds.")
    finished_at: str = Field(description="UTC, ISO 8601 with milliseconds.")
    versions: Versions = Field(description="Versions of the software that ran.")
    config_file: str = Field(description="The configuration file read.")
    config: Config = Field(description="The resolved configuration, every default filled in.")
    config_sha256: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 of `config`, canonical JSON.")
    seed: int = Field(description="The configuration's seed.")
    stage_seconds: dict[str, float] = Field(description="Seconds per stage (the report stage excluded).")
    peak_memory_bytes: Count = Field(description="The process's peak resident memory.")
    artifacts: list[ArtifactRecord] = Field(description="Every published file but manifest.json itself.")
    volatile_fields: list[str] = Field(description="Fields that differ between two runs of the same inputs and seed.")

    @classmethod
    def read(cls, path: Path | str) -> Manifest:
        """A manifest.json file, validated (pydantic.ValidationError where it does not fit). Parsed
        first: the configuration's path fields accept strings only in Python mode."""
        return cls.model_validate(json.loads(Path(path).read_bytes()))


# --- JSON Schema and the docs' tables -----------------------------------------------------

SCHEMAS: dict[str, type[_Part]] = {"results": Results, "manifest": Manifest}


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The published JSON Schema of results.json (``Results``) or manifest.json (``Manifest``)."""
    schema = model.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


#: How the tables name the keys of an object whose keys are data, by field name.
_KEY_NAMES = {
    "classes": "<class>",
    "per_class": "<class>",
    "models": "<model>",
    "operators": "<operator>",
    "stage_seconds": "<stage>",
    "evidence": "<measure>",
}
#: Objects the tables do not expand: configuration.md documents them.
_DOCUMENTED_ELSEWHERE = {
    "Config": "configuration.json's keys ([configuration.md](configuration.md))",
    "Gptq": "configuration.json's `gptq`",
    "Qat": "configuration.json's `qat`",
    "MixedPrecision": "configuration.json's `mixed_precision`",
}


def results_table_markdown() -> str:
    """The table of results.json's fields in docs/outputs.md, generated from ``Results``."""
    return _fields_table(Results)


def manifest_table_markdown() -> str:
    """The table of manifest.json's fields in docs/outputs.md, generated from ``Manifest``."""
    return _fields_table(Manifest)


def _fields_table(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    rows = ["| field | type | what |", "| --- | --- | --- |"]
    _object_rows(schema, schema, "", rows)
    return "\n".join(rows)


def _object_rows(schema: dict[str, Any], node: dict[str, Any], prefix: str, rows: list[str]) -> None:
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        kind, nested = _kind(schema, prop, name)
        optional = "" if name in required else " (optional)"
        rows.append(f"| `{path}` | {kind}{optional} | {prop.get('description', '')} |")
        if nested is not None:
            _object_rows(schema, nested[1], f"{path}{nested[0]}.", rows)


def _kind(schema: dict[str, Any], prop: dict[str, Any], name: str) -> tuple[str, tuple[str, dict] | None]:
    """A property's type in words, and (path infix, object) where its fields get rows of their own."""
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        kind, nested = _kind(schema, options[0], name) if len(options) == 1 else ("any", None)
        return (kind + " or null" if len(options) < len(prop["anyOf"]) else kind), nested
    if "$ref" in prop:
        definition = prop["$ref"].rsplit("/", 1)[1]
        if definition in _DOCUMENTED_ELSEWHERE:
            return f"object: {_DOCUMENTED_ELSEWHERE[definition]}", None
        prop = schema["$defs"][definition]
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`", None
    if "enum" in prop:
        return " \\| ".join(f"`{value}`" for value in prop["enum"]), None
    kind = prop.get("type", "any")
    if kind == "object" and "properties" in prop:
        return "object", ("", prop)
    if kind == "object":
        key = f"`{_KEY_NAMES.get(name, '<key>')}`"
        values = prop.get("additionalProperties", {})
        inner, nested = _kind(schema, values if isinstance(values, dict) else {}, name)
        return f"object: {key} to {inner}", (f".{key.strip('`')}", nested[1]) if nested else None
    if kind == "array" and "prefixItems" in prop:
        return f"[{', '.join(_kind(schema, item, name)[0] for item in prop['prefixItems'])}]", None
    if kind == "array":
        inner, nested = _kind(schema, prop.get("items", {}), name)
        plural = inner + "s" if inner.isalpha() else inner
        return f"array of {plural}", ("[]", nested[1]) if nested else None
    return _bounded(kind, prop), None


def _bounded(kind: str, target: dict[str, Any]) -> str:
    low, high = target.get("minimum"), target.get("maximum")
    if low is not None and high is not None:
        return f"{kind} in [{low}, {high}]"
    if low is not None:
        return f"{kind} >= {low}"
    if "exclusiveMinimum" in target:
        return f"{kind} > {target['exclusiveMinimum']}"
    return kind
