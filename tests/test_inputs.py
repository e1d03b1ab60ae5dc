"""Everything configuration.json names is checked before any heavy work, each problem
naming the key or file at fault and what would be accepted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import read_config, run_cli, save_image, write_config

from mctq_job import config as config_mod
from mctq_job import inputs
from mctq_job.artifacts import ARTIFACT_NAMES
from mctq_job.errors import ConfigError, InputDataError, MctqError


def check(project: Path) -> inputs.Inputs:
    path = project / "configuration.json"
    return inputs.check(config_mod.load(path), path)


FINAL_NAMES = set(ARTIFACT_NAMES)


def failure(project: Path, kind=None) -> str:
    """Run the real job on a broken project: it must exit with ``kind``'s code, end with one
    run.failed event, and leave no artifact under a final name. Returns the message."""
    result = run_cli("run", cwd=project)
    last = result.events[-1]
    assert last["event"] == "run.failed", result.stdout[-2000:]
    if kind is not None:
        assert result.returncode == kind.exit_code == last["exit_code"], last
    assert not [p for p in project.rglob("*") if p.name in FINAL_NAMES]
    assert "model" not in {e.get("stage") for e in result.named("stage.start")}  # found before TensorFlow
    with pytest.raises(MctqError):  # and the library API raises the same
        check(project)
    return last["message"]


def test_valid_project_discovers_images_recursively_in_any_case(tiny_project):
    """Calibration: every jpg/jpeg/png/bmp in any sub-folder, any case. Evaluation: images of
    the configured extension under each class folder, labelled from the label file."""
    checked = check(tiny_project)
    assert [p.name for p in checked.calibration_images] == ["img0.png", "img2.jpeg", "img1.JPG", "img3.bmp"]
    assert {(s.class_name, s.label) for s in checked.truth.samples} == {("cat", 0), ("dog", 1)}
    assert len(checked.truth.samples) == 4


def test_evaluation_images_nested_below_class_folders_and_upper_case_extension_count(tiny_project):
    save_image(tiny_project / "data" / "val" / "dog" / "deeper" / "more" / "x.JPG")
    assert len(check(tiny_project).truth.samples) == 5


def test_missing_paths_are_named_with_their_key(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "dataset_image_dir": "nowhere", "evaluate_label_file": "gone.json"})
    message = failure(tiny_project, ConfigError)
    assert "key 'dataset_image_dir'" in message and "nowhere does not exist" in message
    assert "key 'evaluate_label_file'" in message and "gone.json does not exist" in message


def test_file_where_a_folder_is_expected(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "evaluate_image_dir": "data/labels.json"})
    message = failure(tiny_project, ConfigError)
    assert "key 'evaluate_image_dir'" in message and "is a file; expected a folder" in message


def test_folder_where_a_file_is_expected(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "evaluate_label_file": "data"})
    assert "key 'evaluate_label_file'" in failure(tiny_project, ConfigError)


def test_batch_size_larger_than_the_image_count(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "batch_size": 5})
    message = failure(tiny_project, ConfigError)
    assert "key 'batch_size': 5 is more than the 4 images" in message
    assert "an integer from 1 to 4" in message


@pytest.mark.parametrize("target", ["file", "folder", "parent"])
def test_symbolic_links_are_refused(tiny_project, target):
    root = tiny_project
    cfg = read_config(root)
    if target == "file":
        os.symlink(root / "data" / "labels.json", root / "link.json")
        write_config(root, {**cfg, "evaluate_label_file": "link.json"})
    elif target == "folder":
        os.symlink(root / "data" / "train", root / "train-link")
        write_config(root, {**cfg, "dataset_image_dir": "train-link"})
    else:
        os.symlink(root / "data", root / "data-link")
        write_config(root, {**cfg, "dataset_image_dir": "data-link/train"})
    message = failure(root, ConfigError)
    assert "symbolic link, which is not supported" in message


def test_symbolic_links_inside_the_image_folders_are_refused(tiny_project):
    os.symlink(tiny_project / "data" / "train" / "sub0" / "img0.png", tiny_project / "data" / "train" / "l.png")
    message = failure(tiny_project, InputDataError)
    assert "key 'dataset_image_dir': symbolic links are not supported" in message and "l.png" in message


def test_empty_calibration_folder_and_folder_of_other_files(tiny_project):
    empty = tiny_project / "empty"
    empty.mkdir()
    (tiny_project / "notes").mkdir()
    (tiny_project / "notes" / "a.txt").write_text("x")
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "dataset_image_dir": "empty"})
    assert "no images under" in failure(tiny_project, InputDataError)
    write_config(tiny_project, {**cfg, "dataset_image_dir": "notes"})
    message = failure(tiny_project, InputDataError)
    assert "1 other files: 1 x .txt" in message and "bmp, jpeg, jpg, png" in message


@pytest.mark.parametrize(
    "content,expect",
    [
        ("not json", "is not readable JSON"),
        ("[1, 2]", "holds list"),
        ("{}", "holds an empty object"),
        ('{"cat": "0", "dog": 1}', "the id of 'cat' is not an integer >= 0"),
        ('{"cat": true, "dog": 1}', "the id of 'cat' is not an integer >= 0"),
        ('{"cat": 1, "dog": 1}', "id 1 is given to 'cat', 'dog'"),
    ],
)
def test_label_file_problems(tiny_project, content, expect):
    (tiny_project / "data" / "labels.json").write_text(content)
    message = failure(tiny_project, InputDataError)
    assert expect in message and "labels.json" in message


def test_class_folder_without_label_names_folder_file_and_known_labels(tiny_project):
    save_image(tiny_project / "data" / "val" / "bird" / "b.jpg")
    message = failure(tiny_project, InputDataError)
    assert "class folder 'bird'" in message and "labels.json" in message and "known labels: cat, dog" in message


def test_evaluation_folder_without_class_folders(tiny_project):
    flat = tiny_project / "flat"
    save_image(flat / "a.jpg")
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "evaluate_image_dir": "flat"})
    assert "has no class folders" in failure(tiny_project, InputDataError)


def test_wrong_extension_says_which_ones_are_there(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "evaluate_image_extension": "png"})
    message = failure(tiny_project, InputDataError)
    assert "key 'evaluate_image_extension': no .png images" in message and "4 x .jpg" in message


def test_stray_files_beside_class_folders_are_ignored_and_reported(tiny_project):
    (tiny_project / "data" / "val" / "README.txt").write_text("hi")
    checked = check(tiny_project)
    assert checked.ignored == ((str(tiny_project / "data" / "val" / "README.txt"), "file outside any class folder"),)


@pytest.mark.parametrize(
    "content,reason", [(b"", "is empty (0 bytes)"), (b"<html>oops</html>", "is not a JPEG, PNG or BMP file")]
)
def test_zero_byte_or_non_image_file_with_an_image_name(tiny_project, content, reason):
    victim = tiny_project / "data" / "train" / "sub0" / "img0.png"
    victim.write_bytes(content)
    message = failure(tiny_project, InputDataError)
    assert f"{victim} {reason}" in message and '"on_corrupt_image": "skip"' in message


def test_unreadable_images_can_be_skipped_instead(tiny_project):
    victim = tiny_project / "data" / "val" / "cat" / "cat0.jpg"
    victim.write_bytes(b"")
    write_config(tiny_project, {**read_config(tiny_project), "on_corrupt_image": "skip"})
    checked = check(tiny_project)
    assert victim not in {s.path for s in checked.truth.samples} and checked.skipped[0][0] == victim


@pytest.mark.parametrize(
    "document,expect",
    [
        ("{ not json", "not valid JSON at line 1, column 3"),
        ("[]", "expected a JSON object"),
        ({"batch_size": "2"}, "key 'batch_size': input should be a valid integer"),
        ({"batch_size": 2.0}, "key 'batch_size': input should be a valid integer"),
        ({"iteration_count": True}, "key 'iteration_count': input should be a valid integer"),
        ({"input_tensor_size": 0}, "key 'input_tensor_size': input should be greater than or equal to 1"),
        ({"iteration_count": -1}, "key 'iteration_count': input should be greater than or equal to 1"),
        ({"batchsize": 2}, "unknown key 'batchsize'; did you mean 'batch_size'?"),
        ({"evaluate_label_file": None}, "key 'evaluate_label_file': expected a non-empty path string"),
    ],
)
def test_bad_configuration_documents(tiny_project, document, expect):
    path = tiny_project / "configuration.json"
    path.write_text(document if isinstance(document, str) else json.dumps({**read_config(tiny_project), **document}))
    assert expect in failure(tiny_project, ConfigError)


def test_model_path_that_is_not_a_keras_model(tiny_project):
    (tiny_project / "model.onnx").write_bytes(b"x")
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "source_keras_model": "model.onnx"})
    message = failure(tiny_project, InputDataError)
    assert "is not a .h5 or .keras file" in message and "expected a Keras SavedModel folder" in message
    write_config(tiny_project, {**cfg, "source_keras_model": "data"})
    assert "has no saved_model.pb" in failure(tiny_project, InputDataError)


def test_output_folder_under_a_file_is_refused(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "output_dir": "data/labels.json/out"})
    assert "key 'output_dir'" in failure(tiny_project, ConfigError)


def test_missing_output_folders_are_fine_and_not_created_by_checking(tiny_project):
    check(tiny_project)
    assert not (tiny_project / "out").exists() and not (tiny_project / "res").exists()
