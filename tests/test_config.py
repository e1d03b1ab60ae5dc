"""configuration.json: the AITRIOS keys load unchanged; every bad value gets one message
naming the key, the value and what is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mctq_job import config as config_mod
from mctq_job import docs_tables
from mctq_job.errors import ConfigError

AITRIOS = {
    "source_keras_model": "../model/saved_model",
    "dataset_image_dir": "./dataset/training",
    "batch_size": 50,
    "input_tensor_size": 224,
    "iteration_count": 10,
    "output_dir": "./output",
    "evaluate_image_dir": "./dataset/validation",
    "evaluate_image_extension": "jpg",
    "evaluate_label_file": "./dataset/labels.json",
    "evaluate_result_dir": "./evaluate/results",
}


def write(tmp_path: Path, document) -> Path:
    path = tmp_path / "configuration.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def problems_of(tmp_path: Path, document) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_mod.load(write(tmp_path, document))
    return info.value.problems


def test_aitrios_configuration_loads_unchanged_with_paths_resolved_against_its_folder(tmp_path):
    """The notebook's configuration.json, byte for byte, loads; relative paths are taken from
    the config file's folder, absolute ones kept."""
    cfg = config_mod.load(write(tmp_path, {**AITRIOS, "output_dir": "/abs/out"}))
    assert cfg.source_keras_model == tmp_path / "../model/saved_model"
    assert cfg.dataset_image_dir == tmp_path / "dataset/training"
    assert cfg.output_dir == Path("/abs/out")
    assert (cfg.batch_size, cfg.input_tensor_size, cfg.iteration_count) == (50, 224, 10)
    assert cfg.evaluate_image_extension == "jpg"


def test_defaults_are_the_notebooks_preprocessing_seed_zero_and_imx500(tmp_path):
    cfg = config_mod.load(write(tmp_path, AITRIOS))
    assert cfg.preprocessing.resize == "shorter_side_center_crop"
    assert cfg.preprocessing.crop_fraction == pytest.approx(224 / 256)
    assert cfg.preprocessing.normalization() == ((127.5,) * 3, (127.5,) * 3)
    assert cfg.seed == 0 and cfg.target_platform == "imx500"


def test_extension_with_leading_dot_is_accepted(tmp_path):
    assert (
        config_mod.load(write(tmp_path, {**AITRIOS, "evaluate_image_extension": ".JPG"})).evaluate_image_extension
        == "JPG"
    )


def test_malformed_json_names_line_and_column(tmp_path):
    problems = problems_of(tmp_path, '{\n  "batch_size": 50,\n  "input_tensor_size": ,\n}')
    assert "line 3, column 24" in problems[0] and "not valid JSON" in problems[0]


def test_array_at_top_level_is_refused(tmp_path):
    assert "expected a JSON object" in problems_of(tmp_path, [AITRIOS])[0]
    assert "got an array" in problems_of(tmp_path, [AITRIOS])[0]


def test_duplicate_key_is_refused(tmp_path):
    text = json.dumps(AITRIOS)[:-1] + ', "batch_size": 5}'
    assert "'batch_size' appears more than once" in problems_of(tmp_path, text)[0]


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        config_mod.load(tmp_path / "nope.json")
    assert "not found" in info.value.message and "--config" in info.value.message


@pytest.mark.parametrize("key", sorted(AITRIOS))
def test_each_required_key_missing_is_named(tmp_path, key):
    doc = {k: v for k, v in AITRIOS.items() if k != key}
    (problem,) = problems_of(tmp_path, doc)
    assert f"required key '{key}' is missing" in problem


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("batch_size", "50", 'got "50" (a string)'),
        ("batch_size", 50.0, "got 50.0 (a number)"),
        ("batch_size", True, "got true (a boolean)"),
        ("batch_size", 0, "greater than or equal to 1"),
        ("iteration_count", -3, "greater than or equal to 1"),
        ("input_tensor_size", 22.5, "valid integer"),
        ("output_dir", "", "non-empty path string"),
        ("dataset_image_dir", 7, "non-empty path string"),
        ("evaluate_image_extension", "j/pg", "should match pattern"),
        ("target_platform", "imx", "'imx500', 'tflite' or 'qnnpack'"),
        ("seed", -1, "greater than or equal to 0"),
    ],
)
def test_wrong_values_name_the_key_the_value_and_what_is_accepted(tmp_path, key, value, expect):
    (problem,) = problems_of(tmp_path, {**AITRIOS, key: value})
    assert problem.startswith(f"key '{key}'")
    assert expect in problem
    assert "Accepted:" in problem


def test_unknown_key_suggests_the_near_miss(tmp_path):
    doc = {**AITRIOS, "batchsize": 3}
    (problem,) = problems_of(tmp_path, doc)
    assert "unknown key 'batchsize'" in problem and "did you mean 'batch_size'?" in problem


def test_wrong_case_key_is_refused_with_the_right_spelling(tmp_path):
    doc = {**{k: v for k, v in AITRIOS.items() if k != "output_dir"}, "Output_Dir": "./o"}
    problems = problems_of(tmp_path, doc)
    assert any("unknown key 'Output_Dir'" in p and "'output_dir'" in p for p in problems)
    assert any("required key 'output_dir' is missing" in p for p in problems)


def test_all_problems_are_reported_together(tmp_path):
    problems = problems_of(tmp_path, {**AITRIOS, "batch_size": "x", "iteration_count": 0, "extra": 1})
    assert len(problems) == 3


def test_preprocessing_options_are_validated(tmp_path):
    (problem,) = problems_of(tmp_path, {**AITRIOS, "preprocessing": {"preset": "unit", "mean": [1, 2, 3]}})
    assert "either 'preset' or 'mean'/'std'" in problem
    (problem,) = problems_of(tmp_path, {**AITRIOS, "preprocessing": {"mean": [1, 2]}})
    assert problem.startswith("key 'preprocessing.mean'")
    (problem,) = problems_of(tmp_path, {**AITRIOS, "preprocessing": {"rezise": "stretch"}})
    assert "did you mean 'resize'?" in problem


def test_explicit_mean_std_override_the_default(tmp_path):
    cfg = config_mod.load(
        write(tmp_path, {**AITRIOS, "preprocessing": {"mean": [1, 2, 3], "std": [4, 5, 6], "resize": "stretch"}})
    )
    assert cfg.preprocessing.normalization() == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))


def test_schema_is_the_model_and_lists_the_ten_required_keys():
    schema = config_mod.json_schema()
    assert sorted(schema["required"]) == sorted(AITRIOS)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["batch_size"]["minimum"] == 1


def test_schema_accepts_what_load_accepts(tmp_path):
    """The published schema and the loader agree on a valid document (checked with the
    schema's own types)."""
    schema = config_mod.json_schema()
    for key, value in AITRIOS.items():
        expected = schema["properties"][key]["type"]
        assert {"string": str, "integer": int}[expected] is type(value)


def test_digest_is_stable_and_changes_with_content(tmp_path):
    a = config_mod.load(write(tmp_path, AITRIOS)).digest()
    assert a == config_mod.load(write(tmp_path, AITRIOS)).digest()
    assert a != config_mod.load(write(tmp_path, {**AITRIOS, "seed": 1})).digest()


# --- quantization options and the accuracy gate --------------------------------------------


def test_quantization_options_default_to_the_notebooks_ptq_int8_without_gate(tmp_path):
    cfg = config_mod.load(write(tmp_path, AITRIOS))
    assert cfg.quantization_settings() == {
        "target_platform": "imx500",
        "target_platform_version": "1.0",
        "method": "ptq",
        "gptq": None,
        "qat": None,
        "mixed_precision": None,
        "activations": {"error_method": "mse", "z_threshold": None, "shift_negative_correction": True},
        "export_format": "int8",
        "quantized_io": "float",
    }
    assert cfg.imx500 is None and cfg.recover is None
    assert cfg.max_top1_drop is None and cfg.gptq_options() is None


def test_gptq_without_options_gets_the_cheap_defaults(tmp_path):
    cfg = config_mod.load(write(tmp_path, {**AITRIOS, "quantization_method": "gptq"}))
    assert cfg.quantization_settings()["gptq"] == {"epochs": 5, "hessian": False}


def test_qat_without_options_gets_the_defaults_and_its_options_are_reported(tmp_path):
    cfg = config_mod.load(write(tmp_path, {**AITRIOS, "quantization_method": "qat"}))
    assert cfg.quantization_settings()["qat"] == {"epochs": 2, "learning_rate": 0.001, "images": 1024}
    assert cfg.gptq_options() is None
    given = {"epochs": 3, "learning_rate": 0.01, "images": 200}
    cfg = config_mod.load(write(tmp_path, {**AITRIOS, "quantization_method": "qat", "qat": given}))
    assert cfg.quantization_settings()["method"] == "qat" and cfg.quantization_settings()["qat"] == given


def test_every_quantization_option_together_loads(tmp_path):
    cfg = config_mod.load(
        write(
            tmp_path,
            {
                **AITRIOS,
                "target_platform_version": "6.0",
                "quantization_method": "gptq",
                "gptq": {"epochs": 2, "hessian": True},
                "mixed_precision": {"weights_memory_ratio": 0.5},
                "export_format": "fakely_quant",
                "activations": {"error_method": "noclipping", "z_threshold": 4, "shift_negative_correction": False},
                "recover": {"max_attempts": 2},
                "max_top1_drop": 0.03,
            },
        )
    )
    assert cfg.quantization_settings() == {
        "target_platform": "imx500",
        "target_platform_version": "6.0",
        "method": "gptq",
        "gptq": {"epochs": 2, "hessian": True},
        "qat": None,
        "mixed_precision": {"weights_memory_ratio": 0.5, "images": 32, "hessian": False},
        "activations": {"error_method": "noclipping", "z_threshold": 4.0, "shift_negative_correction": False},
        "export_format": "fakely_quant",
        "quantized_io": "float",
    }
    assert cfg.max_top1_drop == 0.03
    assert cfg.recover is not None and (cfg.recover.max_attempts, cfg.recover.max_seconds) == (2, 1800)


@pytest.mark.parametrize(
    "extra,expect",
    [
        ({"target_platform": "tflite", "target_platform_version": "4.0"}, "tflite has version(s) 1.0, got '4.0'"),
        ({"target_platform_version": "2.0"}, "key 'target_platform_version'"),
        ({"gptq": {"epochs": 3}}, 'set "quantization_method": "gptq" or remove \'gptq\''),
        ({"quantization_method": "gptq", "gptq": {"epoch": 3}}, "unknown key 'gptq.epoch'; did you mean 'epochs'?"),
        ({"quantization_method": "gptq", "gptq": {"epochs": 0}}, "key 'gptq.epochs'"),
        ({"quantization_method": "sgd"}, "'ptq', 'gptq' or 'qat'"),
        ({"qat": {"epochs": 2}}, 'set "quantization_method": "qat" or remove \'qat\''),
        ({"quantization_method": "gptq", "qat": {}}, "quantization_method is 'gptq'"),
        ({"quantization_method": "qat", "qat": {"epochs": 0}}, "key 'qat.epochs'"),
        ({"quantization_method": "qat", "qat": {"epochs": 101}}, "key 'qat.epochs'"),
        ({"quantization_method": "qat", "qat": {"learning_rate": 0}}, "key 'qat.learning_rate'"),
        ({"quantization_method": "qat", "qat": {"learning_rate": "fast"}}, "key 'qat.learning_rate'"),
        ({"quantization_method": "qat", "qat": {"images": 0}}, "key 'qat.images'"),
        ({"quantization_method": "qat", "qat": {"epoch": 2}}, "unknown key 'qat.epoch'; did you mean 'epochs'?"),
        (
            {"quantization_method": "qat", "mixed_precision": {"weights_memory_ratio": 0.5}},
            "key 'mixed_precision' is not taken with quantization_method 'qat'",
        ),
        (
            {"target_platform": "qnnpack", "mixed_precision": {"weights_memory_ratio": 0.5}},
            "needs target_platform 'imx500'",
        ),
        ({"mixed_precision": {"weights_memory_ratio": 0}}, "key 'mixed_precision.weights_memory_ratio'"),
        ({"mixed_precision": {}}, "required key 'mixed_precision.weights_memory_ratio' is missing"),
        ({"mixed_precision": 0.5}, "key 'mixed_precision'"),
        ({"export_format": "fp16"}, "'int8', 'mct_int8' or 'fakely_quant'"),
        ({"quantized_io": "int16"}, "key 'quantized_io'"),
        ({"quantized_io": "int16"}, "'float', 'int8' or 'uint8'"),
        (
            {"export_format": "mct_int8", "quantized_io": "int8"},
            "key 'quantized_io': 'int8' needs export_format 'int8'",
        ),
        ({"target_platform": "tflite", "imx500": {"package": True}}, "key 'imx500' needs target_platform 'imx500'"),
        ({"imx500": {"package": "yes"}}, "key 'imx500.package'"),
        ({"imx500": {"fit": True}}, "unknown key 'imx500.fit'"),
        ({"max_top1_drop": 1.5}, "key 'max_top1_drop'"),
        ({"max_top1_drop": -0.01}, "key 'max_top1_drop'"),
        ({"max_top1_drop": "2%"}, "key 'max_top1_drop'"),
        ({"activations": {"error_method": "hmse"}}, "key 'activations.error_method'"),
        ({"activations": {"error_method": "hmse"}}, "'mse', 'mae', 'lp', 'kl' or 'noclipping'"),
        ({"activations": {"z_threshold": 0}}, "key 'activations.z_threshold'"),
        ({"activations": {"z_threshold": "4"}}, "key 'activations.z_threshold'"),
        ({"activations": {"bits": {"concat": 16}}}, "unknown key 'activations.bits'"),
        ({"activations": {"shift_negative_correction": 1}}, "key 'activations.shift_negative_correction'"),
        ({"recover": {"max_attempts": 6}}, "key 'recover' needs the accuracy gate it recovers, max_top1_drop"),
        ({"recover": {}}, "accepted: set max_top1_drop (e.g. 0.02), or remove 'recover'"),
        ({"recover": {"max_attempts": 0}, "max_top1_drop": 0.02}, "key 'recover.max_attempts'"),
        ({"recover": {"max_seconds": 0}, "max_top1_drop": 0.02}, "key 'recover.max_seconds'"),
        ({"recover": {"attempts": 3}, "max_top1_drop": 0.02}, "unknown key 'recover.attempts'"),
        ({"recover": True, "max_top1_drop": 0.02}, "key 'recover'"),
    ],
)
def test_bad_quantization_options_name_the_key_and_what_is_accepted(tmp_path, extra, expect):
    (problem,) = problems_of(tmp_path, {**AITRIOS, **extra})
    assert expect in problem


def test_extra_exports_default_to_none_and_take_any_subset_in_the_given_order(tmp_path):
    assert config_mod.load(write(tmp_path, AITRIOS)).extra_exports == []
    both = config_mod.load(write(tmp_path, {**AITRIOS, "extra_exports": ["dynamic_range", "float16"]}))
    assert both.extra_exports == ["dynamic_range", "float16"]
    assert both.to_document()["extra_exports"] == ["dynamic_range", "float16"]


@pytest.mark.parametrize(
    "value,expect",
    [
        (["int4"], 'got "int4"'),
        (["float16", "int4"], 'got "int4"'),
        (["float16", "float16"], "'float16' is given 2 times; list each value at most once"),
        (["dynamic_range", "float16", "dynamic_range"], "'dynamic_range' is given 2 times"),
        ("float16", "input should be a valid list"),
        ([16], "got 16"),
    ],
)
def test_bad_extra_exports_name_the_key_the_value_and_the_accepted_values(tmp_path, value, expect):
    (problem,) = problems_of(tmp_path, {**AITRIOS, "extra_exports": value})
    assert problem.startswith("key 'extra_exports': ") and expect in problem
    assert "'float16'" in problem and "'dynamic_range'" in problem  # what is accepted


def test_the_readme_key_table_lists_the_nested_option_keys():
    table = docs_tables.keys_table_markdown()
    for key in (
        "gptq.epochs",
        "gptq.hessian",
        "qat.epochs",
        "qat.learning_rate",
        "qat.images",
        "mixed_precision.weights_memory_ratio",
        "preprocessing.resize",
        "max_top1_drop",
        "export_format",
        "target_platform_version",
        "quantized_io",
        "imx500.package",
        "imx500.require_fit",
        "activations.error_method",
        "activations.z_threshold",
        "recover.max_attempts",
        "recover.max_seconds",
    ):
        assert f"| `{key}` |" in table


# --- the task ---------------------------------------------------------------------------------

DETECTION = {
    **AITRIOS,
    "task": "detection",
    "evaluate_annotation_file": "./dataset/instances.json",
    "preprocessing": {"resize": "letterbox"},
}


def test_the_task_defaults_to_classification_and_detection_loads_with_its_keys(tmp_path):
    cfg = config_mod.load(write(tmp_path, AITRIOS))
    assert cfg.task == "classification" and cfg.evaluate_annotation_file is None
    cfg = config_mod.load(write(tmp_path, DETECTION))
    assert cfg.task == "detection" and cfg.evaluate_annotation_file == tmp_path / "dataset" / "instances.json"
    assert cfg.preprocessing.resize == "letterbox"
    stretched = config_mod.load(write(tmp_path, {**DETECTION, "preprocessing": {"resize": "stretch"}}))
    assert stretched.preprocessing.resize == "stretch"


def test_letterbox_serves_classification_too(tmp_path):
    cfg = config_mod.load(write(tmp_path, {**AITRIOS, "preprocessing": {"resize": "letterbox"}}))
    assert cfg.task == "classification" and cfg.preprocessing.resize == "letterbox"


@pytest.mark.parametrize(
    ("document", "expect"),
    [
        (
            {k: v for k, v in DETECTION.items() if k != "evaluate_annotation_file"},
            "key 'evaluate_annotation_file' is required for task 'detection'",
        ),
        (
            {**AITRIOS, "evaluate_annotation_file": "a.json"},
            "key 'evaluate_annotation_file' is for task 'detection', but task is 'classification'",
        ),
        (
            {**DETECTION, "preprocessing": {}},
            "key 'preprocessing.resize': 'shorter_side_center_crop' (the default where it is not given) crops the "
            "image's edges, cutting objects off, so task 'detection' does not take it; accepted: 'stretch' or "
            "'letterbox'",
        ),
        (
            {**DETECTION, "preprocessing": {"resize": "shorter_side_center_crop"}},
            "key 'preprocessing.resize': 'shorter_side_center_crop'",
        ),
        ({**DETECTION, "max_top1_drop": 0.02}, "key 'max_top1_drop' is a top-1 accuracy gate"),
        ({**DETECTION, "task": "segmentation"}, "key 'task': input should be 'classification' or 'detection'"),
        ({**DETECTION, "evaluate_annotation_file": ""}, "key 'evaluate_annotation_file': expected a non-empty path"),
    ],
)
def test_the_task_and_its_keys_must_fit_together(tmp_path, document, expect):
    (problem,) = problems_of(tmp_path, document)
    assert problem.startswith(expect), problem


def test_the_published_schema_takes_both_tasks_and_refuses_an_unknown_one(tmp_path):
    import jsonschema

    schema = config_mod.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(AITRIOS))
    assert not list(validator.iter_errors(DETECTION))
    assert not list(validator.iter_errors({**AITRIOS, "evaluate_annotation_file": None}))
    assert list(validator.iter_errors({**DETECTION, "task": "segmentation"}))
    assert list(validator.iter_errors({**DETECTION, "evaluate_annotation_file": ""}))
