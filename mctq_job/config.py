"""configuration.json: its schema (the one source, also printed by ``mctq-job schema``) and
:func:`load`, which reads a file and validates it against the schema.

Beside it: :mod:`mctq_job.config_file` reads the file (encoding, JSON, the ``{index}``
placeholder), :mod:`mctq_job.config_errors` words a validation error as one sentence naming the
key, and :mod:`mctq_job.docs_tables` makes the documentation's table of keys.

The ten keys of the AITRIOS notebook are required and keep their names, so an existing
configuration.json runs unchanged. Relative paths resolve against the folder of the
configuration file (the notebook's run directory). Optional keys add what a container
cannot get by editing code: preprocessing, seed and target platform.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .artifacts import EXTRA_EXPORT_FILES
from .config_file import locate as locate  # re-exported: callers locate and load through config
from .config_file import read_json
from .errors import AccuracyGateError, ConfigError, Imx500NotFitError, numbered

PATH_KEYS = (
    "source_keras_model",
    "dataset_image_dir",
    "output_dir",
    "evaluate_image_dir",
    "evaluate_label_file",
    "evaluate_result_dir",
)
#: Path keys that may be absent (null): checked like the others where given.
OPTIONAL_PATH_KEYS = ("evaluate_annotation_file",)
#: What the job can be asked to measure (``tasks.task_for`` has a line for each); classification is the notebook's.
TASKS = ("classification", "detection")
#: Letterbox padding: the grey (0..255, each channel) around an image scaled to fit the square.
LETTERBOX_FILL = 114
#: Resize modes that keep every part of the image, so the boxes of a detector map back to it.
WHOLE_IMAGE_RESIZES = ("stretch", "letterbox")
#: Normalization presets: per-channel (mean, std) applied to RGB pixels in 0..255.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mobilenet": ((127.5,) * 3, (127.5,) * 3),  # -> [-1, 1], the notebook's default
    "unit": ((0.0,) * 3, (255.0,) * 3),  # -> [0, 1]
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "none": ((0.0,) * 3, (1.0,) * 3),  # raw 0..255
}
#: MCT 2.6.1's target platform capability (TPC) versions per platform; the first is MCT's default.
TPC_VERSIONS: dict[str, tuple[str, ...]] = {
    "imx500": ("1.0", "4.0", "5.0", "6.0"),
    "tflite": ("1.0",),
    "qnnpack": ("1.0",),
}
TARGET_PLATFORMS = tuple(TPC_VERSIONS)
ALL_TPC_VERSIONS = tuple(sorted({v for versions in TPC_VERSIONS.values() for v in versions}))
#: ``quantization_method``'s values: post-training, gradient-based post-training, quantization-aware training.
QUANTIZATION_METHODS = ("ptq", "gptq", "qat")
EXPORT_FORMATS = ("int8", "mct_int8", "fakely_quant")
QUANTIZED_IO = ("float", "int8", "uint8")
#: MCT's activation threshold error methods accepted by ``activations.error_method`` (MCT's
#: QuantizationErrorMethod, by lower-case name; HMSE is for weights only).
ERROR_METHODS = ("mse", "mae", "lp", "kl", "noclipping")
# The Literal types below are built from the tuples above, so each list of values has one source.
TargetPlatform = Literal[TARGET_PLATFORMS]  # type: ignore[valid-type]
TpcVersion = Literal[ALL_TPC_VERSIONS]  # type: ignore[valid-type]
ExportFormat = Literal[EXPORT_FORMATS]  # type: ignore[valid-type]
QuantizedIO = Literal[QUANTIZED_IO]  # type: ignore[valid-type]
ErrorMethod = Literal[ERROR_METHODS]  # type: ignore[valid-type]


def _path_string(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty path string")
    return Path(value)


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


def _strip_dot(value: str) -> str:
    return value[1:] if value.startswith(".") else value


PathValue = Annotated[Path, BeforeValidator(_path_string), AfterValidator(_resolve)]


def _path_field(description: str) -> Any:
    return Field(
        description=description + " Absolute, or relative to the folder of configuration.json.",
        json_schema_extra={"type": "string", "minLength": 1},
    )


class Preprocessing(BaseModel):
    """How an image becomes the model's input; applied identically for calibration and
    for all four evaluated models."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    resize: Literal["shorter_side_center_crop", "stretch", "letterbox"] = Field(
        "shorter_side_center_crop",
        description="'shorter_side_center_crop': scale the shorter side to input_tensor_size / crop_fraction, "
        "then crop the centre square (the notebook's way; classification only); 'stretch': resize straight "
        "to the square; 'letterbox': scale the longer side to the square's side, keeping the aspect ratio, "
        f"and centre the image on a grey ({LETTERBOX_FILL}) square (the YOLO family's way). Detection "
        "takes 'stretch' or 'letterbox', as the detector was trained.",
    )
    crop_fraction: float = Field(
        224 / 256,
        gt=0,
        le=1,
        description="Fraction of the resized shorter side kept by the centre crop, a number in (0, 1]; "
        "0.875 (=224/256) as in the notebook.",
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = Field(
        "bilinear", description="Resampling filter: one of nearest, bilinear, bicubic, lanczos."
    )
    channel_order: Literal["rgb", "bgr"] = Field("rgb", description="Channel order fed to the model: rgb or bgr.")
    preset: Literal["mobilenet", "unit", "imagenet", "none"] | None = Field(
        None,
        description="Normalization preset: mobilenet ((x-127.5)/127.5, the default), unit (x/255), "
        "imagenet (ImageNet mean/std on 0..255), none (raw 0..255). Not together with mean/std.",
    )
    mean: list[float] | None = Field(
        None, min_length=3, max_length=3, description="Per-channel mean subtracted from 0..255 pixels: three numbers."
    )
    std: list[float] | None = Field(
        None, min_length=3, max_length=3, description="Per-channel divisor after the mean: three numbers, none zero."
    )

    @model_validator(mode="after")
    def _one_normalization(self) -> Preprocessing:
        if self.preset is not None and (self.mean is not None or self.std is not None):
            raise ValueError("give either 'preset' or 'mean'/'std', not both")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("'std' must not contain 0")
        return self

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) in effect: explicit values, else the preset, else mobilenet."""
        preset_mean, preset_std = NORMALIZATION_PRESETS[self.preset or "mobilenet"]
        mean = tuple(self.mean) if self.mean is not None else preset_mean
        std = tuple(self.std) if self.std is not None else preset_std
        return mean, std


class Gptq(BaseModel):
    """Gradient-based post-training quantization: fine-tunes the quantized weights."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    epochs: int = Field(
        5, ge=1, le=10_000, description="Passes over the calibration batches: an integer >= 1; default 5."
    )
    hessian: bool = Field(
        False,
        description="Hessian-based loss weighting and sample attention (MCT's default): "
        "true or false; default false, since on a CPU they take close to "
        "an hour for a MobileNet-sized model.",
    )


class Qat(BaseModel):
    """Quantization-aware training: MCT's quantization, then training of the quantized model on the
    labelled calibration images (dataset_image_dir/<class name>/..., the label file's names)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    epochs: int = Field(
        2, ge=1, le=100, description="Passes over the training images: an integer in 1..100; default 2."
    )
    learning_rate: float = Field(
        0.001, gt=0, le=1, description="Adam's learning rate: a number in (0, 1]; default 0.001."
    )
    images: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Most calibration images trained on (a subset drawn with `seed` where there are more): "
        "an integer >= 1; default 1024. With epochs, it bounds the training's time.",
    )


class MixedPrecision(BaseModel):
    """Mixed-precision weights (2, 4 or 8 bits per layer) under a memory target."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    weights_memory_ratio: float = Field(
        ...,
        gt=0,
        le=1,
        description="Weights memory target as a fraction of the all-8-bit size: a number in (0, 1], e.g. 0.75.",
    )
    images: int = Field(
        32,
        ge=1,
        le=10_000,
        description="Calibration images used to score each layer's sensitivity: an integer >= 1; default 32.",
    )
    hessian: bool = Field(
        False, description="Hessian-based sensitivity scores: true or false; default false (slow on a CPU)."
    )


class Activations(BaseModel):
    """How MCT chooses each activation's 8-bit range (its QuantizationConfig): the settings a
    recovery attempt changes, so that recovered_configuration.json reproduces its files."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    error_method: ErrorMethod = Field(
        "mse",
        description="The error MCT minimizes when it picks an activation's threshold: one of "
        f"{', '.join(ERROR_METHODS)} (noclipping: the whole measured range); default mse (MCT's default).",
    )
    z_threshold: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Outlier removal: activation values more than this many standard deviations from the "
        "mean are left out when the range is measured, a number in (0, 1000], e.g. 4; null (default): none.",
    )
    shift_negative_correction: bool = Field(
        True,
        description="MCT's shift-negative correction of activations with small negative values (swish, "
        "GELU, PReLU) where the target quantizes them unsigned: true (default, MCT's) or false.",
    )


class Recover(BaseModel):
    """Recovery: when the accuracy gate fails, re-quantize with other settings until one is within it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_attempts: int = Field(
        6, ge=1, le=100, description="Most re-quantizations tried: an integer in 1..100; default 6."
    )
    max_seconds: float = Field(
        1800,
        gt=0,
        le=7 * 24 * 3600,
        description="Most seconds spent on them: a number > 0; default 1800. No attempt starts that "
        "would likely end after it.",
    )


class Diagnosis(BaseModel):
    """The layer-by-layer comparison of the float and the quantized model."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    images: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Evaluation images (a fixed subset drawn with `seed`) on which the float and MCT's "
        "quantized Keras model are compared layer by layer: an integer >= 0; default 64; 0 turns the "
        "diagnosis off.",
    )


class Imx500(BaseModel):
    """Sony's IMX500 converter, run on MCT's Keras export: the package for the sensor."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    package: bool = Field(
        False,
        description="Run the converter and publish packerOut.zip, dnnParams.xml and its "
        "memory report: true or false; default false.",
    )
    require_fit: bool = Field(
        False,
        description="With package: a model that does not fit the chip's memory "
        f"fails the run (exit {Imx500NotFitError.exit_code}) after everything is written: true or "
        "false; default false.",
    )


class Config(BaseModel):
    """configuration.json. The first ten keys are the AITRIOS notebook's, all required."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, title="mctq-job configuration.json")

    source_keras_model: PathValue = _path_field("Keras model to quantize: a SavedModel folder, or a .h5 / .keras file.")
    dataset_image_dir: PathValue = _path_field(
        "Folder of calibration images (jpg, jpeg, png, bmp, any case), searched recursively."
    )
    batch_size: int = Field(
        ...,
        ge=1,
        description="Images per calibration batch: an integer >= 1 and at most the number of "
        "images in dataset_image_dir.",
    )
    input_tensor_size: int = Field(
        ...,
        ge=1,
        le=8192,
        description="Side of the model's square input in pixels: an integer >= 1 "
        "equal to the model's input height and width.",
    )
    iteration_count: int = Field(
        ..., ge=1, le=1_000_000, description="Number of calibration batches given to MCT: an integer >= 1."
    )
    output_dir: PathValue = _path_field(
        "Folder for model.tflite, model_quantized.tflite and manifest.json; created if missing."
    )
    evaluate_image_dir: PathValue = _path_field(
        "Evaluation images. Classification: ImageNet layout, <class name>/<any sub-folders>/<image>; "
        "detection: every image of evaluate_image_extension in any sub-folder, its boxes in "
        "evaluate_annotation_file (an image without boxes is valid)."
    )
    evaluate_image_extension: Annotated[str, AfterValidator(_strip_dot)] = Field(
        ...,
        pattern=r"^\.?[A-Za-z0-9]{1,10}$",
        description='Extension of evaluation images, matched case-insensitively: e.g. "jpg" or ".png".',
    )
    evaluate_label_file: PathValue = _path_field(
        'JSON file mapping each class name to the model\'s output index: {"daisy": 0, ...}. Classification: '
        "the names are the class folders'; detection: a COCO annotation file's category names."
    )
    evaluate_result_dir: PathValue = _path_field("Folder for results.json; created if missing.")

    task: Literal[TASKS] = Field(  # type: ignore[valid-type]
        "classification",
        description="Optional. What the model does: 'classification' (default: one score per class, "
        "top-1 accuracy) or 'detection' (boxes, scores, classes and their count after the model's "
        "non-max suppression; COCO mAP; needs evaluate_annotation_file and a preprocessing.resize "
        "of 'stretch' or 'letterbox').",
    )
    evaluate_annotation_file: PathValue | None = Field(
        None,
        description="Optional; required for task 'detection' and refused for classification: the evaluation images' boxes, either a COCO "
        '"instances" JSON file (images\' file_name relative to evaluate_image_dir, bbox [x, y, width, '
        "height] in pixels of the image, categories matched to evaluate_label_file by name) or a folder "
        "of YOLO label files (<image path relative to evaluate_image_dir, ending .txt>, one line "
        "'class x_center y_center width height' per box, normalized to 0..1, class the model's index). "
        "Absolute, or relative to the folder of configuration.json.",
        json_schema_extra={"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]},
    )
    preprocessing: Preprocessing = Field(
        default_factory=Preprocessing,
        description="Optional. Preprocessing for calibration and evaluation; default: the notebook's MobileNet one.",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="Optional. Seed for drawing calibration images and for TensorFlow: "
        "an integer in 0..4294967295; default 0.",
    )
    on_corrupt_image: Literal["fail", "skip"] = Field(
        "fail",
        description="Optional. What an image that cannot be decoded does: 'fail' (default) stops the "
        "run naming the file; 'skip' leaves it out, logs it and lists it in results.json.",
    )
    target_platform: TargetPlatform = Field(
        "imx500", description="Optional. MCT target platform capabilities: imx500 (default), tflite or qnnpack."
    )
    target_platform_version: TpcVersion = Field(
        "1.0",
        description="Optional. Version of the target platform capabilities: imx500 has 1.0 (default), "
        "4.0, 5.0 and 6.0; tflite and qnnpack have 1.0.",
    )
    quantization_method: Literal[QUANTIZATION_METHODS] = Field(  # type: ignore[valid-type]
        "ptq",
        description="Optional. 'ptq' (default): post-training quantization; 'gptq': gradient-based "
        "fine-tuning of the quantized weights (options in 'gptq'); 'qat': quantization-aware training "
        "on the calibration images, which must sit in class sub-folders named like the label file's "
        "classes (classification only; options in 'qat').",
    )
    gptq: Gptq | None = Field(
        None, description='Optional, with quantization_method \'gptq\': {"epochs": 5, "hessian": false}.'
    )
    qat: Qat | None = Field(
        None,
        description='Optional, with quantization_method \'qat\': {"epochs": 2, "learning_rate": 0.001, '
        '"images": 1024}.',
    )
    mixed_precision: MixedPrecision | None = Field(
        None,
        description='Optional, imx500 only: {"weights_memory_ratio": 0.75}: per-layer 2/4/8-bit weights '
        "within that fraction of the 8-bit weights memory; null (default): 8 bits everywhere.",
    )
    export_format: ExportFormat = Field(
        "int8",
        description="Optional. model_quantized.tflite as 'int8' (default: fully integer, every "
        "convolution and dense layer an int8 kernel with MCT's weights and ranges), "
        "'mct_int8' (MCT's own INT8 exporter: some layers stay float) or 'fakely_quant' "
        "(float graph with quantize/dequantize pairs).",
    )
    quantized_io: QuantizedIO = Field(
        "float",
        description="Optional, with export_format 'int8'. Input and output type of "
        "model_quantized.tflite: 'float' (default), 'int8' or 'uint8' (for integer-only "
        "runtimes; scale and zero point in results.json).",
    )
    extra_exports: list[Literal[tuple(EXTRA_EXPORT_FILES)]] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="Optional. TensorFlow Lite converter's other post-training modes, written, "
        "evaluated and reported beside the others: any of 'float16' (model_float16.tflite: "
        "float16 weights) and 'dynamic_range' (model_dynamic_range.tflite: int8 weights, "
        "float activations), each at most once; default [] (none).",
    )
    imx500: Imx500 | None = Field(
        None,
        description='Optional, imx500 only: {"package": true, "require_fit": false}: run Sony\'s IMX500 '
        "converter on model_quantized.keras and publish its package (needs the converter: "
        "the mctq-job:imx500 image or make imx500-venv).",
    )
    diagnosis: Diagnosis = Field(
        default_factory=Diagnosis,
        description='Optional. {"images": 64}: per-layer SQNR of MCT\'s quantized model and of '
        "model_quantized.tflite against the float one, and findings (unbalanced concatenations, outliers, "
        "calibration mismatches, weights quantized per tensor) in results.json and report.html; "
        '{"images": 0} turns it off.',
    )
    activations: Activations = Field(
        default_factory=Activations,
        description='Optional. How MCT picks activation ranges: {"error_method": "mse", "z_threshold": null, '
        '"shift_negative_correction": true} (the defaults, MCT\'s own).',
    )
    recover: Recover | None = Field(
        None,
        description='Optional, with max_top1_drop (detection: max_map_drop): {"max_attempts": 6, '
        '"max_seconds": 1800}: where the gate fails, try other quantization settings ranked by the diagnosis, '
        "publish the first within the gate and write recovered_configuration.json (its settings) in output_dir; "
        "null (default): no recovery.",
    )
    max_top1_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Optional. Accuracy gate: the largest allowed top-1 drop from the Keras "
        "model to model_quantized.tflite, as a fraction (0.02 = 2 points); when "
        f"exceeded, everything is still written and the run exits {AccuracyGateError.exit_code}. null: no gate.",
    )
    max_map_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Optional, task 'detection' only. Accuracy gate: the largest allowed drop of COCO "
        "mAP@[.5:.95] from the Keras model to model_quantized.tflite, as a fraction of the Keras model's "
        "(0.1 = it may lose a tenth of its mAP); when exceeded, everything is still written and the run exits "
        f"{AccuracyGateError.exit_code}. null: no gate.",
    )

    @field_validator("extra_exports")
    @classmethod
    def _each_export_once(cls, value: list[str]) -> list[str]:
        repeated = [name for name in dict.fromkeys(value) if value.count(name) > 1]
        if repeated:
            raise ValueError(f"{repeated[0]!r} is given {value.count(repeated[0])} times; list each value at most once")
        return value

    @model_validator(mode="after")
    def _task_keys_fit(self) -> Config:
        if self.task == "classification" and self.evaluate_annotation_file is not None:
            raise ValueError(
                "key 'evaluate_annotation_file' is for task 'detection', but task is 'classification' "
                "(whose ground truth is the class folders of evaluate_image_dir); accepted: "
                '"task": "detection", or remove \'evaluate_annotation_file\''
            )
        if self.task != "detection":
            if self.max_map_drop is not None:
                raise ValueError(
                    "key 'max_map_drop' is the mAP gate of task 'detection', but task is 'classification'; "
                    "accepted: max_top1_drop for classification, or remove 'max_map_drop'"
                )
            return self
        if self.evaluate_annotation_file is None:
            raise ValueError(
                "key 'evaluate_annotation_file' is required for task 'detection': a COCO \"instances\" "
                "JSON file or a folder of YOLO label files holding the boxes of the evaluation images"
            )
        if self.preprocessing.resize not in WHOLE_IMAGE_RESIZES:
            raise ValueError(
                f"key 'preprocessing.resize': {self.preprocessing.resize!r} (the default where it is not given) crops the "
                f"image's edges, cutting objects off, so task 'detection' does not take it; accepted: "
                f"{' or '.join(map(repr, WHOLE_IMAGE_RESIZES))}, the way the detector was trained"
            )
        if self.max_top1_drop is not None:
            raise ValueError(
                "key 'max_top1_drop' is a top-1 accuracy gate, which task 'detection' has no figure for; "
                "accepted: max_map_drop (the mAP gate), or remove it"
            )
        if self.extra_exports:
            raise ValueError(
                f"key 'extra_exports': {self.extra_exports} is not made for task 'detection' (the detection export "
                "cuts the network before its post-processing for model.tflite and model_quantized.tflite only); "
                "accepted: [] (or remove the key)"
            )
        if self.target_platform != "imx500":
            raise ValueError(
                f"key 'target_platform': {self.target_platform!r} is not supported for task 'detection': MCT "
                "2.6.1's tflite and qnnpack target platforms quantize the output of the detector's "
                "post-processing (NMS), which MCT then fails to measure; the imx500 platform leaves it float; "
                "accepted: 'imx500'"
            )
        if self.export_format != "int8":
            raise ValueError(
                f"key 'export_format': {self.export_format!r} is not supported for task 'detection': the cut "
                "detector's named outputs are written by the full-integer export only; accepted: 'int8'"
            )
        if self.recover is not None and self.max_map_drop is None:
            raise ValueError(
                "key 'recover' needs the accuracy gate it recovers; for task 'detection' that is max_map_drop; "
                "accepted: set max_map_drop (e.g. 0.05), or remove 'recover'"
            )
        return self

    @model_validator(mode="after")
    def _options_fit_together(self) -> Config:
        versions = TPC_VERSIONS[self.target_platform]
        if self.target_platform_version not in versions:
            raise ValueError(
                f"key 'target_platform_version': {self.target_platform} has version(s) "
                f"{', '.join(versions)}, got {self.target_platform_version!r}"
            )
        if self.gptq is not None and self.quantization_method != "gptq":
            raise ValueError(
                "key 'gptq' is given but quantization_method is 'ptq'; accepted: set "
                '"quantization_method": "gptq" or remove \'gptq\''
            )
        if self.qat is not None and self.quantization_method != "qat":
            raise ValueError(
                f"key 'qat' is given but quantization_method is {self.quantization_method!r}; accepted: set "
                '"quantization_method": "qat" or remove \'qat\''
            )
        if self.quantization_method == "qat" and self.task != "classification":
            raise ValueError(
                f"key 'quantization_method': 'qat' trains on labelled images, which task {self.task!r} has none "
                "of; accepted: 'ptq' or 'gptq'"
            )
        if self.quantization_method == "qat" and self.mixed_precision is not None:
            raise ValueError(
                "key 'mixed_precision' is not taken with quantization_method 'qat'; accepted: remove "
                "'mixed_precision', or quantization_method 'ptq' or 'gptq'"
            )
        if self.quantized_io != "float" and self.export_format != "int8":
            raise ValueError(
                f"key 'quantized_io': {self.quantized_io!r} needs export_format 'int8', got "
                f'{self.export_format!r}; accepted: "export_format": "int8", or quantized_io '
                f"'float'"
            )
        if self.imx500 is not None and self.target_platform != "imx500":
            raise ValueError(
                f"key 'imx500' needs target_platform 'imx500', got {self.target_platform!r}; "
                f'accepted: "target_platform": "imx500", or remove \'imx500\''
            )
        if self.mixed_precision is not None and self.target_platform != "imx500":
            raise ValueError(
                f"key 'mixed_precision' needs target_platform 'imx500' (the only one with 2- and "
                f"4-bit weights), got {self.target_platform!r}; accepted: imx500, or remove "
                f"'mixed_precision'"
            )
        if self.recover is not None and self.task != "detection" and self.max_top1_drop is None:
            raise ValueError(
                "key 'recover' needs the accuracy gate it recovers, max_top1_drop; accepted: set max_top1_drop "
                "(e.g. 0.02), or remove 'recover'"
            )
        return self

    def gptq_options(self) -> Gptq | None:
        """The GPTQ options in effect: None for 'ptq', the given or default ones for 'gptq'."""
        return (self.gptq or Gptq()) if self.quantization_method == "gptq" else None

    def qat_options(self) -> Qat | None:
        """The QAT options in effect: the given or default ones for 'qat', else None."""
        return (self.qat or Qat()) if self.quantization_method == "qat" else None

    def quantization_settings(self) -> dict[str, Any]:
        """The quantization options in effect, for results.json and the report."""
        gptq = self.gptq_options()
        return {
            "target_platform": self.target_platform,
            "target_platform_version": self.target_platform_version,
            "method": self.quantization_method,
            "gptq": gptq.model_dump() if gptq else None,
            "qat": qat.model_dump() if (qat := self.qat_options()) else None,
            "mixed_precision": self.mixed_precision.model_dump() if self.mixed_precision else None,
            "activations": self.activations.model_dump(),
            "export_format": self.export_format,
            "quantized_io": self.quantized_io,
        }

    def to_document(self) -> dict[str, Any]:
        """The resolved configuration, every default filled in, as JSON-ready data."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        canonical = json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


NESTED_MODELS: dict[str, type[BaseModel]] = {
    "preprocessing": Preprocessing,
    "gptq": Gptq,
    "qat": Qat,
    "imx500": Imx500,
    "mixed_precision": MixedPrecision,
    "diagnosis": Diagnosis,
    "activations": Activations,
    "recover": Recover,
}


def load(path: Path) -> Config:
    """Read, parse and validate a configuration file; raise one ConfigError naming every problem."""
    data = read_json(path)
    try:
        return Config.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        from .config_errors import problems as worded

        problems = worded(exc)
        raise ConfigError(f"{path}: {numbered(problems)}", problems=problems, file=str(path)) from None
