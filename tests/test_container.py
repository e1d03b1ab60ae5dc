"""The container image (issue 3), for real: built once per session through `make image-offline`
(or reused when an image already carries the digest of its inputs), then the job run in it
the three ways docs/container.md shows: one project folder at /workspace; read-only /config
and /data with a writable /output; and hardened (read-only root, no network, no capabilities,
no new privileges, an arbitrary UID). Plus a bad configuration, `docker stop` in mid-run, and
the pinned versions. Skips without a Docker engine, unless MCTQ_REQUIRE_DOCKER=1 (CI)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import read_config, write_config
from container_support import (
    DIGEST_LABEL,
    Built,
    ContainerRun,
    canonical,
    docker_client,
    host_user,
    image_for_tests,
    lock_pins,
    make_group0_writable,
    run_container,
)

import mctq_job
from mctq_job.artifacts import ARTIFACT_NAMES, OUTPUT_DIR_FILES, RESULT_DIR_FILES
from mctq_job.errors import ConfigError, Interrupted
from mctq_job.results import DETECTION_KEYS

pytestmark = pytest.mark.container

FINAL_NAMES = set(ARTIFACT_NAMES)
ACCURACY_KEYS = {
    "top_1_accuracy_keras",
    "top_1_accuracy_keras_quantized",
    "top_1_accuracy_tflite",
    "top_1_accuracy_tflite_quantized",
}
#: A detection run's in their place (issue 17): COCO mAP@[.5:.95] and mAP@.5 of the four models.
MAP_KEYS = set(DETECTION_KEYS)
SIGTERM_EXIT = Interrupted(signal.SIGTERM).exit_code


# --- the image ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client():
    return docker_client()


@pytest.fixture(scope="session")
def built(client) -> Built:
    return image_for_tests(client)


@pytest.fixture(scope="session")
def image(built):
    return built.image


@pytest.fixture(scope="session")
def image_uid(image) -> int:
    return int(image.attrs["Config"]["User"].split(":")[0])


# --- one job run per way of mounting ------------------------------------------------------------


@dataclass
class Scenario:
    run: ContainerRun
    output_dir: Path  # host folders of the config's output_dir and evaluate_result_dir
    result_dir: Path
    owner: tuple[int, int]  # uid, gid the artifacts must have
    path_map: dict[str, Path]  # container path prefix -> host folder


def _copy_template(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    dest.chmod(0o755)  # pytest's temporary folders are 0700; the image's users are not their owner
    return dest


@pytest.fixture(scope="module")
def notebook(client, image, image_uid, digits_template, tmp_path_factory) -> Scenario:
    """`docker run --rm -v "$PWD:/workspace" mctq-job`: the notebook's run directory, the
    image's own user (UID 10001, GID 0), the folder writable for group 0."""
    project = _copy_template(digits_template, tmp_path_factory.mktemp("notebook") / "project")
    make_group0_writable(project)
    run = run_container(client, image, mounts={project: "/workspace"})
    return Scenario(run, project / "output", project / "evaluate" / "results", (image_uid, 0), {"/workspace": project})


@pytest.fixture(scope="module")
def split(client, image, digits_template, tmp_path_factory) -> Scenario:
    """Read-only /config and /data, writable /output, `--config /config/configuration.json`,
    hardened, as the host's user (`--user "$(id -u):$(id -g)"`; as root, a stand-in user)."""
    base = tmp_path_factory.mktemp("split")
    data = _copy_template(digits_template, base / "data")
    (base / "config").mkdir()
    (base / "output").mkdir()
    config = read_config(data)
    config.update(
        source_keras_model="/data/model/saved_model",
        dataset_image_dir="/data/dataset/training",
        evaluate_image_dir="/data/dataset/validation",
        evaluate_label_file="/data/dataset/labels.json",
        output_dir="/output/models",
        evaluate_result_dir="/output/evaluation",
    )
    write_config(base / "config", config)
    (data / "configuration.json").unlink()  # only the mounted /config one counts
    for folder in (base / "config", base / "output"):
        folder.chmod(0o755)
    uid, gid = host_user()
    if os.geteuid() == 0:
        os.chown(base / "output", uid, gid)
    run = run_container(
        client,
        image,
        ["--config", "/config/configuration.json"],
        hardened=True,
        user=f"{uid}:{gid}",
        mounts={base / "config": "/config:ro", data: "/data:ro", base / "output": "/output"},
    )
    return Scenario(
        run,
        base / "output" / "models",
        base / "output" / "evaluation",
        (uid, gid),
        {"/output": base / "output", "/data": data},
    )


@pytest.fixture(scope="module")
def hardened(client, image, digits_template, tmp_path_factory) -> Scenario:
    """Every hardening flag, and a UID the image has never heard of, in group 0 (OpenShift)."""
    project = _copy_template(digits_template, tmp_path_factory.mktemp("hardened") / "project")
    make_group0_writable(project)
    run = run_container(client, image, hardened=True, user="12345:0", mounts={project: "/workspace"})
    return Scenario(run, project / "output", project / "evaluate" / "results", (12345, 0), {"/workspace": project})


SCENARIOS = ["notebook", "split", "hardened"]


@pytest.fixture(params=SCENARIOS)
def scenario(request) -> Scenario:
    return request.getfixturevalue(request.param)


def test_the_job_succeeds_and_stdout_is_json_lines_only(scenario):
    run = scenario.run
    assert run.exit_code == 0, run.explain()
    for line in run.lines:
        assert isinstance(json.loads(line), dict), line
    assert run.events[0]["event"] == "run.start"
    assert run.events[-1]["event"] == "run.finish" and run.events[-1]["exit_code"] == 0
    # TensorFlow's C++ start-up chatter is silenced by the image's environment.
    assert run.stderr.strip() == "", run.stderr[-3000:]


def test_artifacts_are_complete_and_match_the_manifest(scenario, accuracy_keys=ACCURACY_KEYS):
    assert scenario.run.exit_code == 0, scenario.run.explain()
    assert {p.name for p in scenario.output_dir.iterdir()} == set(OUTPUT_DIR_FILES)
    assert {p.name for p in scenario.result_dir.iterdir()} == set(RESULT_DIR_FILES)
    manifest = json.loads((scenario.output_dir / "manifest.json").read_text())
    assert manifest["outcome"] == "success"
    listed = set()
    for record in manifest["artifacts"]:
        prefix = next(p for p in scenario.path_map if record["path"].startswith(p + "/"))
        host = scenario.path_map[prefix] / record["path"][len(prefix) + 1 :]
        data = host.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (record["size"], record["sha256"]), host
        listed.add(record["name"])
    assert set(ARTIFACT_NAMES) - {"manifest.json"} == listed
    results = json.loads((scenario.result_dir / "results.json").read_text())
    assert set(results) >= accuracy_keys
    assert all(0.0 <= results[k] <= 1.0 for k in accuracy_keys)


def test_artifacts_belong_to_the_user_the_container_ran_as(scenario):
    assert scenario.run.exit_code == 0, scenario.run.explain()
    created = [scenario.output_dir, scenario.result_dir, *scenario.output_dir.iterdir(), *scenario.result_dir.iterdir()]
    owners = {str(p): (p.stat().st_uid, p.stat().st_gid) for p in created}
    assert set(owners.values()) == {scenario.owner}, owners


def test_the_job_writes_nothing_but_its_outputs_into_the_workspace(hardened, digits_template):
    """No caches, no ~/.keras, no stray logs in the mounted folder (they go to the tmpfs)."""
    assert hardened.run.exit_code == 0, hardened.run.explain()
    project = hardened.output_dir.parent
    assert {p.name for p in project.iterdir()} == {p.name for p in digits_template.iterdir()} | {"output", "evaluate"}


# --- a detector ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detection_project(tmp_path_factory) -> Path:
    """examples/detection.py's project, small: a detector ending in combined NMS, COCO ground
    truth matched to the labels by name, letterbox resizing; one calibration batch."""
    from test_detection_example import detection

    dest = tmp_path_factory.mktemp("detection") / "project"
    detection.build(dest, n_train=300, epochs=4, n_eval=16, n_calibration=8, ssd=False, log=lambda _: None)
    config = read_config(dest)
    config.update(iteration_count=1, batch_size=8)
    write_config(dest, config)
    dest.chmod(0o755)
    make_group0_writable(dest)
    return dest


@pytest.fixture(scope="module")
def detection_run(client, image, detection_project) -> Scenario:
    """The detection project hardened, as an arbitrary UID in group 0: the image holds what
    detection needs beyond classification (pycocotools, edgemdt_cl) and runs it offline."""
    run = run_container(client, image, hardened=True, user="12345:0", mounts={detection_project: "/workspace"})
    project = detection_project
    return Scenario(run, project / "output", project / "evaluate" / "results", (12345, 0), {"/workspace": project})


def test_a_detection_project_runs_hardened_with_the_map_keys_and_a_complete_manifest(detection_run):
    """Exit 0 with JSON lines only; every artifact written, owned by the container's user and
    matching manifest.json; results.json has the four models' mAP@[.5:.95] and mAP@.5 (as
    pycocotools measured them: the same figures as its detection section), no top-1 key, and
    names the post-processing a deployer runs after the cut TFLite files."""
    test_the_job_succeeds_and_stdout_is_json_lines_only(detection_run)
    test_artifacts_are_complete_and_match_the_manifest(detection_run, accuracy_keys=MAP_KEYS)
    test_artifacts_belong_to_the_user_the_container_ran_as(detection_run)
    results = json.loads((detection_run.result_dir / "results.json").read_text())
    assert results["task"] == "detection" and not set(results) & ACCURACY_KEYS
    figures = results["detection"]["models"]
    for model in ("keras", "keras_quantized", "tflite", "tflite_quantized"):
        assert results[f"map_50_95_{model}"] == figures[model]["map_50_95"], model
        assert results[f"map_50_{model}"] == figures[model]["map_50"] >= figures[model]["map_50_95"], model
    assert results["map_50_keras"] > 0, "the trained detector finds objects in the container too"
    assert results["detection"]["post_processing"]["kind"] == "combined_non_max_suppression"
    assert results["detection"]["annotations"] == "coco" and results["image_count"] == 16
    finish = detection_run.run.events[-1]
    assert {k: finish[k] for k in MAP_KEYS} == {k: results[k] for k in MAP_KEYS}  # the last log line says them


# --- failures ------------------------------------------------------------------------------------


def test_a_bad_config_exits_with_the_config_code_names_the_key_and_writes_nothing(client, image, project):
    config = read_config(project)
    config["batch_size"] = "lots"
    write_config(project, config)
    make_group0_writable(project)
    run = run_container(client, image, hardened=True, user="12345:0", mounts={project: "/workspace"})
    assert run.exit_code == ConfigError.exit_code, run.explain()
    for line in run.lines:
        json.loads(line)
    last = run.events[-1]
    assert last["event"] == "run.failed" and last["exit_code"] == ConfigError.exit_code
    assert "batch_size" in last["message"]
    assert not (project / "output").exists() and not (project / "evaluate").exists()


def test_docker_stop_mid_run_exits_143_and_leaves_no_file(client, image, project):
    """SIGTERM reaches the job through tini; it removes its temporary files and exits at once."""
    make_group0_writable(project)
    run = run_container(
        client,
        image,
        hardened=True,
        user="12345:0",
        mounts={project: "/workspace"},
        until=lambda e: e.get("event") == "stage.start" and e.get("stage") == "export",
        then=lambda container: container.stop(timeout=30),
    )
    assert any(e.get("stage") == "export" for e in run.streamed), run.explain()
    assert run.exit_code == SIGTERM_EXIT, run.explain()
    last = run.events[-1]
    assert last["event"] == "run.failed" and last["exit_code"] == SIGTERM_EXIT, run.explain()
    assert not any(e["event"] == "artifact.written" for e in run.events)
    left = [
        p.name
        for folder in (project / "output", project / "evaluate" / "results")
        if folder.is_dir()
        for p in folder.iterdir()
    ]
    assert left == [], left


# --- what is in the image ------------------------------------------------------------------------


def test_version_command_reports_the_pinned_versions(client, image):
    run = run_container(client, image, ["version"], hardened=True, user="12345:0")
    assert run.exit_code == 0, run.explain()
    versions = json.loads(run.stdout)
    pins = lock_pins()
    assert versions["tensorflow"] == pins["tensorflow-cpu"]
    assert versions["model_compression_toolkit"] == pins["model-compression-toolkit"]
    assert versions["numpy"] == pins["numpy"]
    assert versions["mctq_job"] == mctq_job.__version__
    assert versions["python"].startswith("3.11.")


def test_pip_freeze_in_the_image_equals_requirements_lock(client, image):
    run = run_container(
        client, image, ["freeze", "--all"], entrypoint=["/opt/venv/bin/pip"], hardened=True, user="12345:0"
    )
    assert run.exit_code == 0, run.explain()
    frozen = {}
    for line in run.stdout.splitlines():
        name, sep, version = line.partition("==")
        assert sep, f"not a pinned requirement: {line!r}"
        frozen[canonical(name)] = version
    frozen.pop("pip")  # the venv's installer, not a dependency
    assert frozen == lock_pins()


def test_labels_and_configuration(built, image):
    labels = image.labels
    for key in ("title", "version", "revision", "source", "created"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.version"] == mctq_job.__version__
    pins = lock_pins()
    assert labels["io.mctq-job.tensorflow.version"] == pins["tensorflow-cpu"]
    assert labels["io.mctq-job.model-compression-toolkit.version"] == pins["model-compression-toolkit"]
    if built.digest:
        assert labels[DIGEST_LABEL] == built.digest
    config = image.attrs["Config"]
    assert config["User"] == "10001:0" and config["WorkingDir"] == "/workspace"
    assert config["Entrypoint"][0].endswith("/tini"), config["Entrypoint"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2" and env["PYTHONUNBUFFERED"] == "1"
    # The size docs/container.md states (about 1.49 GB): a guard against a lost trimming step.
    assert image.attrs["Size"] < 1.6e9, f"image grew to {image.attrs['Size'] / 1e9:.2f} GB"
