"""Fuzzing the configuration: whatever JSON a user writes, the answer is an exit code from
the table and a message, never a traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import read_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mctq_job.cli import main
from mctq_job.config import Config, Preprocessing
from mctq_job.errors import EXIT_CODES

TABLE = {e.code for e in EXIT_CODES}
# No "/" in generated text: an absolute path like "/" would scan the whole disk (correctly, slowly).
TEXT = st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
KEYS = [*Config.model_fields, *(f"preprocessing.{k}" for k in Preprocessing.model_fields), "unknown_key"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid tiny project (placeholder model: validate never loads it)."""
    from conftest import save_image, write_config

    root = tmp_path_factory.mktemp("fuzz")
    (root / "model" / "saved_model").mkdir(parents=True)
    (root / "model" / "saved_model" / "saved_model.pb").write_bytes(b"placeholder")
    for i in range(3):
        save_image(root / "train" / f"{i}.png")
        save_image(root / "val" / "a" / f"{i}.jpg")
    (root / "labels.json").write_text('{"a": 0}')
    write_config(
        root,
        {
            "source_keras_model": "model/saved_model",
            "dataset_image_dir": "train",
            "batch_size": 2,
            "input_tensor_size": 8,
            "iteration_count": 1,
            "output_dir": "out",
            "evaluate_image_dir": "val",
            "evaluate_image_extension": "jpg",
            "evaluate_label_file": "labels.json",
            "evaluate_result_dir": "res",
        },
    )
    return root


def validate_exit_code(base, document_text: str) -> tuple[int, str]:
    path = base / "fuzzed.json"
    path.write_text(document_text)
    result = CliRunner().invoke(main, ["validate", "--config", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, result.output


def check(base, document) -> None:
    code, output = validate_exit_code(base, document if isinstance(document, str) else json.dumps(document))
    assert code in TABLE
    last = json.loads(output.strip().splitlines()[-1])
    assert last["exit_code"] == code
    if code:
        assert last["event"] == "run.failed" and last["message"]


def with_value(document: dict, dotted_key: str, value) -> dict:
    document = json.loads(json.dumps(document))
    if dotted_key.startswith("preprocessing."):
        document.setdefault("preprocessing", {})[dotted_key.split(".", 1)[1]] = value
    else:
        document[dotted_key] = value
    return document


def test_the_fuzz_base_is_valid(base):
    check(base, read_config(base))
    assert validate_exit_code(base, json.dumps(read_config(base)))[0] == 0


@FUZZ
@given(key=st.sampled_from(KEYS), value=JSON_VALUES)
def test_any_json_value_for_any_key_gets_an_exit_code_from_the_table(base, key, value):
    check(base, with_value(read_config(base), key, value))


@FUZZ
@given(document=JSON_VALUES)
def test_any_json_document_gets_an_exit_code_from_the_table(base, document):
    check(base, document)


@FUZZ
@given(text=st.text(max_size=60))
def test_any_text_gets_an_exit_code_from_the_table(base, text):
    check(base, text)


def test_missing_every_key_at_once(base):
    code, output = validate_exit_code(base, "{}")
    assert code == 3 and output.count("required key") >= 10
