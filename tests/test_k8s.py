"""Kubernetes manifests (issue 4): k8s/base (one configuration as a Job), k8s/overlays/sweep
(an Indexed Job, one configuration per index) and k8s/loader (a helper pod for the volumes).

Offline: every kustomization renders with `kubectl kustomize`; every object passes the
Kubernetes 1.33 schemas in strict mode (and those of the newest version kubernetes-validate
ships); every pod passes the restricted Pod Security Standard; the podFailurePolicy is the
exit-code table of mctq_job/errors.py; the NetworkPolicy isolates every pod; the sweep's
configurations are valid, fit the mounts and never share an output folder.

Rehearsal (marker `container`): the rendered sweep's pod template run with the local Docker
engine for each index, as a kubelet would run it (tests/k8s_support.py: run_pod), then the
artifacts, exit codes, termination messages and the collected table checked.

Without kubectl the tests that render skip, unless MCTQ_REQUIRE_DOCKER=1 or CI is set, which
makes that a failure; without a Docker engine the rehearsal skips, unless MCTQ_REQUIRE_DOCKER=1
(tests/container_support.py, shared with tests/test_container.py).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Iterable

import pytest
import yaml

import kubernetes_validate
from k8s_support import (K8S, ROOT, PodRun, isolated, kustomize, kustomize_retagged, named, only, pod_failure_action,
                         pod_failure_policy_problems, pod_templates, quantity, readable_by_all, restricted_violations,
                         run_pod)
from mctq_job.config import PATH_KEYS, Config
from mctq_job.errors import EXIT_CODES
from mctq_job.pipeline import ARTIFACT_NAMES, MANIFEST_FILE

KUSTOMIZATIONS = {"base": K8S / "base", "sweep": K8S / "overlays" / "sweep", "loader": K8S / "loader"}
JOBS = ("base", "sweep")
#: The oldest Kubernetes the manifests are written for (backoffLimitPerIndex is GA in 1.33),
#: and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
CONTAINER = "mctq-job"
PERMANENT = {e.code for e in EXIT_CODES if e.permanent}
INTERRUPTED = {e.code for e in EXIT_CODES if e.name.startswith("interrupted")}
ACCURACY_KEYS = ("top_1_accuracy_keras", "top_1_accuracy_keras_quantized", "top_1_accuracy_tflite",
                 "top_1_accuracy_tflite_quantized")
#: The memory limit must exceed the measured peak by at least this factor (k8s/README.md).
HEADROOM = 1.25
NAMESPACE = yaml.safe_load((K8S / "namespace.yaml").read_text())
README = (K8S / "README.md").read_text()
MAKE_CONFIGS = K8S / "overlays" / "sweep" / "make_configs.py"
COLLECT = K8S / "collect_results.py"


@cache
def rendered(name: str) -> tuple[dict, ...]:
    return tuple(kustomize(KUSTOMIZATIONS[name]))


def job(name: str) -> dict:
    return only(rendered(name), "Job")


def the_container(spec: dict) -> dict:
    containers = [c for c in spec["containers"] if c["name"] == CONTAINER]
    assert len(containers) == 1, f"no container named {CONTAINER}"
    return containers[0]


def mounts_by_path(spec: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (volumeMount, volume) of the job's container."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in the_container(spec).get("volumeMounts", [])}


def config_files(name: str) -> dict[str, dict]:
    """The job's configurations: ConfigMap key -> parsed configuration.json."""
    spec = job(name)["spec"]["template"]["spec"]
    mount, volume = mounts_by_path(spec)["/config"]
    config_map = named(rendered(name), "ConfigMap", volume["configMap"]["name"])
    return {key: json.loads(text) for key, text in config_map["data"].items()}


def config_path(spec: dict, index: int | None) -> str:
    """The file the pod of ``index`` reads: its --config argument with ``{index}`` filled in."""
    args = the_container(spec)["args"]
    return args[args.index("--config") + 1].replace("{index}", str(index))


def config_source(objects: Iterable[dict], spec: dict, index: int | None) -> tuple[str, str | None]:
    """The ConfigMap key the pod of ``index`` reads through its --config argument (``{index}``
    filled in) and the ConfigMap mounted there, and that key's text (None if missing)."""
    path = PurePosixPath(config_path(spec, index))
    for mount_path, (mount, volume) in mounts_by_path(spec).items():
        if "configMap" in volume and path.is_relative_to(mount_path):
            key = path.relative_to(mount_path).as_posix()
            return key, named(objects, "ConfigMap", volume["configMap"]["name"])["data"].get(key)
    raise AssertionError(f"--config {path} lies in no ConfigMap volume")


def config_for_index(name: str, index: int | None) -> tuple[str, dict | None]:
    """The ConfigMap key and configuration the pod of ``index`` reads."""
    key, text = config_source(rendered(name), job(name)["spec"]["template"]["spec"], index)
    return key, None if text is None else json.loads(text)


# --- rendering and schemas ---------------------------------------------------------------------

EXPECTED_KINDS = {
    "base": ["ConfigMap", "Job", "NetworkPolicy", "PersistentVolumeClaim", "PersistentVolumeClaim"],
    "sweep": ["ConfigMap", "Job", "NetworkPolicy", "PersistentVolumeClaim", "PersistentVolumeClaim"],
    "loader": ["Pod"],
}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_into_the_namespace(name):
    objects = rendered(name)
    assert sorted(o["kind"] for o in objects) == EXPECTED_KINDS[name]
    assert {o["metadata"].get("namespace") for o in objects} == {NAMESPACE["metadata"]["name"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_passes_the_kubernetes_schemas_strictly(name, version):
    for obj in rendered(name):
        used = kubernetes_validate.validate(obj, version, strict=True)
        assert used == ".".join(version.split(".")[:2]), f"{obj['kind']}: validated against {used}, not {version}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_namespace_passes_the_kubernetes_schemas_strictly(version):
    kubernetes_validate.validate(NAMESPACE, version, strict=True)


@pytest.mark.parametrize("mutate", [
    lambda j: j["spec"].update(backofLimit=2),                                        # a typo
    lambda j: j["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy=True),
    lambda j: j["spec"]["podFailurePolicy"]["rules"][0].update(onExitCode={}),
], ids=["unknown-field", "wrong-type", "unknown-nested-field"])
def test_strict_validation_catches_mistakes(mutate):
    broken = copy.deepcopy(job("base"))
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --- the restricted Pod Security Standard ------------------------------------------------------

def test_the_namespace_enforces_the_restricted_standard():
    labels = NAMESPACE["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_passes_the_restricted_standard(name):
    templates = pod_templates(rendered(name))
    assert templates
    for where, metadata, spec in templates:
        assert restricted_violations(spec, metadata) == [], where
        assert spec.get("automountServiceAccountToken") is False, where
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no emptyDir at /tmp"


def _pod(spec_changes):
    def mutate(spec):
        container = spec["containers"][0]
        spec_changes(spec, container, container.setdefault("securityContext", {}), spec.setdefault("securityContext", {}))
    return mutate


VIOLATIONS = {
    "host-network": (_pod(lambda s, c, csc, psc: s.update(hostNetwork=True)), "hostNetwork"),
    "host-pid": (_pod(lambda s, c, csc, psc: s.update(hostPID=True)), "hostPID"),
    "host-ipc": (_pod(lambda s, c, csc, psc: s.update(hostIPC=True)), "hostIPC"),
    "privileged": (_pod(lambda s, c, csc, psc: csc.update(privileged=True)), "privileged"),
    "host-path": (_pod(lambda s, c, csc, psc: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
                  "hostPath"),
    "nfs-volume": (_pod(lambda s, c, csc, psc: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}})),
                   "type ['nfs']"),
    "host-port": (_pod(lambda s, c, csc, psc: c.update(ports=[{"containerPort": 80, "hostPort": 80}])), "hostPort"),
    "escalation": (_pod(lambda s, c, csc, psc: csc.pop("allowPrivilegeEscalation")), "allowPrivilegeEscalation"),
    "root-allowed": (_pod(lambda s, c, csc, psc: (psc.pop("runAsNonRoot"), csc.pop("runAsNonRoot"))), "runAsNonRoot"),
    "root-container": (_pod(lambda s, c, csc, psc: csc.update(runAsNonRoot=False)), "runAsNonRoot"),
    "uid-0": (_pod(lambda s, c, csc, psc: csc.update(runAsUser=0)), "runAsUser"),
    "no-seccomp": (_pod(lambda s, c, csc, psc: (psc.pop("seccompProfile"), csc.pop("seccompProfile"))), "seccomp"),
    "unconfined": (_pod(lambda s, c, csc, psc: csc.update(seccompProfile={"type": "Unconfined"})), "seccomp"),
    "caps-kept": (_pod(lambda s, c, csc, psc: csc["capabilities"].update(drop=["NET_RAW"])), "drop must include ALL"),
    "cap-added": (_pod(lambda s, c, csc, psc: csc["capabilities"].update(add=["SYS_ADMIN"])), "SYS_ADMIN"),
    "proc-mount": (_pod(lambda s, c, csc, psc: csc.update(procMount="Unmasked")), "procMount"),
    "sysctl": (_pod(lambda s, c, csc, psc: psc.update(sysctls=[{"name": "kernel.msgmax", "value": "1"}])), "sysctl"),
    "selinux-user": (_pod(lambda s, c, csc, psc: csc.update(seLinuxOptions={"user": "root"})), "seLinuxOptions.user"),
    "apparmor": (_pod(lambda s, c, csc, psc: csc.update(appArmorProfile={"type": "Unconfined"})), "appArmorProfile"),
}


@pytest.mark.parametrize("case", VIOLATIONS)
def test_the_restricted_checks_catch_each_violation(case):
    mutate, expected = VIOLATIONS[case]
    spec = copy.deepcopy(job("base")["spec"]["template"]["spec"])
    mutate(spec)
    problems = restricted_violations(spec)
    assert any(expected in p for p in problems), problems


def test_net_bind_service_is_the_one_capability_allowed():
    spec = copy.deepcopy(job("base")["spec"]["template"]["spec"])
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(spec) == []


def test_the_pod_runs_as_the_images_own_user():
    """runAsUser is the Dockerfile's USER (any non-root UID works; this one owns nothing special)."""
    user = re.search(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    for name in JOBS:
        assert job(name)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user.group(1))


# --- the Job ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", JOBS)
def test_the_job_is_a_one_shot_batch_run_with_limits(name):
    spec = job(name)["spec"]
    pod = spec["template"]["spec"]
    container = the_container(pod)
    assert pod["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    assert ("backoffLimit" in spec) != ("backoffLimitPerIndex" in spec)
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["image"] == "mctq-job:latest" and container["imagePullPolicy"] == "IfNotPresent"
    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert quantity(resources["requests"][key]) <= quantity(resources["limits"][key]), key
    # Memory: request = limit, so the scheduler reserves what the job may use.
    assert quantity(resources["requests"]["memory"]) == quantity(resources["limits"]["memory"])


@pytest.mark.parametrize("name", JOBS)
def test_the_job_mounts_config_and_data_read_only_and_output_writable(name):
    spec = job(name)["spec"]["template"]["spec"]
    mounts = mounts_by_path(spec)
    assert set(mounts) == {"/config", "/data", "/output", "/tmp"}
    mount, volume = mounts["/config"]
    assert mount["readOnly"] is True and "configMap" in volume
    mount, volume = mounts["/data"]
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    mount, volume = mounts["/output"]
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    claims = {o["metadata"]["name"] for o in rendered(name) if o["kind"] == "PersistentVolumeClaim"}
    assert {mounts[p][1]["persistentVolumeClaim"]["claimName"] for p in ("/data", "/output")} == claims
    assert mounts["/tmp"][1]["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize("name", JOBS)
def test_the_pod_failure_policy_is_accepted_by_the_api_rules(name):
    assert pod_failure_policy_problems(job(name)["spec"]) == []


@pytest.mark.parametrize("name", JOBS)
def test_the_pod_failure_policy_is_the_exit_code_table(name):
    """Permanent codes end the Job (an index, in the sweep) at once; interruptions and
    disruptions are retried without counting; every other failure counts against the limit."""
    spec = job(name)["spec"]
    fail = "FailIndex" if spec.get("completionMode") == "Indexed" else "FailJob"
    rules = spec["podFailurePolicy"]["rules"]
    codes: dict[str, set[int]] = {}
    for rule in rules:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["operator"] == "In"
            codes.setdefault(rule["action"], set()).update(rule["onExitCodes"]["values"])
    assert codes == {fail: PERMANENT, "Ignore": INTERRUPTED}
    assert PERMANENT and INTERRUPTED == {130, 143}
    for entry in EXIT_CODES:
        expected = None if entry.code == 0 else fail if entry.permanent else \
            "Ignore" if entry.code in INTERRUPTED else "Count"
        assert pod_failure_action(spec, {CONTAINER: entry.code}) == expected, entry
    assert pod_failure_action(spec, {CONTAINER: 137}) == "Count"  # OOM kill: retried, counted
    for code in (1, 3, 137):  # eviction, preemption, node drain: whatever the exit code
        assert pod_failure_action(spec, {CONTAINER: code}, ["DisruptionTarget"]) == (fail if code == 3 else "Ignore")


def test_a_disruption_is_ignored_even_without_an_exit_code_rule():
    spec = copy.deepcopy(job("base")["spec"])
    spec["podFailurePolicy"]["rules"] = [r for r in spec["podFailurePolicy"]["rules"] if "onPodConditions" in r]
    assert pod_failure_action(spec, {CONTAINER: 3}, ["DisruptionTarget"]) == "Ignore"
    assert [c["type"] for r in spec["podFailurePolicy"]["rules"] for c in r["onPodConditions"]] == ["DisruptionTarget"]


def test_the_api_rule_checks_catch_bad_policies():
    spec = copy.deepcopy(job("base")["spec"])
    spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] = [4, 3, 0]
    spec["podFailurePolicy"]["rules"][1]["action"] = "FailIndex"
    spec["template"]["spec"]["restartPolicy"] = "OnFailure"
    problems = " | ".join(pod_failure_policy_problems(spec))
    for expected in ("ordered and unique", "0 cannot", "FailIndex needs backoffLimitPerIndex", "restartPolicy"):
        assert expected in problems


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_network_policy_isolates_every_pod(name):
    # The loader brings none of its own: the base's (applied with the volumes) covers it.
    policies = [o for o in rendered(name) if o["kind"] == "NetworkPolicy"] or \
        [o for o in rendered("base") if o["kind"] == "NetworkPolicy"]
    assert policies
    for policy in policies:
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        assert not policy["spec"].get("egress") and not policy["spec"].get("ingress")
    for where, metadata, spec in pod_templates(rendered(name)):
        namespace = NAMESPACE["metadata"]["name"]
        assert isolated(policies, namespace, metadata.get("labels") or {}) == {"Ingress": True, "Egress": True}, where


def test_the_loader_uses_the_base_volumes_the_other_way_round():
    (where, metadata, spec), = pod_templates(rendered("loader"))
    claims = {o["metadata"]["name"] for o in rendered("base") if o["kind"] == "PersistentVolumeClaim"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v} == claims
    assert not mounts["/data"].get("readOnly")  # kubectl cp writes the inputs here
    assert mounts["/output"]["readOnly"] is True and volumes[mounts["/output"]["name"]]["persistentVolumeClaim"]["readOnly"]


# --- configurations ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", JOBS)
def test_every_configuration_is_valid_and_fits_the_mounts(name):
    spec = job(name)["spec"]["template"]["spec"]
    mounts = mounts_by_path(spec)
    read_only = [PurePosixPath(p) for p, (m, v) in mounts.items() if m.get("readOnly") and "persistentVolumeClaim" in v]
    writable = [PurePosixPath(p) for p, (m, v) in mounts.items() if not m.get("readOnly") and "persistentVolumeClaim" in v]
    configs = config_files(name)
    assert configs
    for key, config in configs.items():
        Config.model_validate(config)  # the job's own schema
        for path_key in PATH_KEYS:
            path = PurePosixPath(config[path_key])
            assert path.is_absolute(), f"{key} {path_key}: relative paths resolve against /config"
            targets = writable if path_key in ("output_dir", "evaluate_result_dir") else read_only
            assert any(path.is_relative_to(t) and path != t for t in targets), f"{key} {path_key}={path}"


def test_the_sweep_is_an_indexed_job_over_its_configurations():
    spec = job("sweep")["spec"]
    configs = config_files("sweep")
    assert spec["completionMode"] == "Indexed"
    assert set(configs) == {f"config-{i}.json" for i in range(spec["completions"])}
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 0 and 0 <= spec["maxFailedIndexes"] <= spec["completions"]
    args = the_container(spec["template"]["spec"])["args"]
    assert args[0] == "run" and args.count("--config") == 1 and "{index}" in args[args.index("--config") + 1]
    for index in range(spec["completions"]):
        key, config = config_for_index("sweep", index)
        assert config is not None, f"index {index} reads {key}, which the ConfigMap lacks"


def test_the_sweep_outputs_can_never_collide():
    """Every output_dir and evaluate_result_dir across the sweep (and the base run) is distinct,
    and none lies inside another: two indexes can never write or lock the same folder."""
    folders = [(f"{name}:{key}:{k}", PurePosixPath(config[k])) for name in JOBS
               for key, config in config_files(name).items() for k in ("output_dir", "evaluate_result_dir")]
    assert len(folders) == 2 * (1 + len(config_files("sweep")))
    for i, (where_a, a) in enumerate(folders):
        for where_b, b in folders[i + 1:]:
            assert not (a == b or a.is_relative_to(b) or b.is_relative_to(a)), f"{where_a}={a} and {where_b}={b}"


def test_the_worked_example_sweeps_platforms_and_calibration_sizes():
    configs = [config_for_index("sweep", i)[1] for i in range(job("sweep")["spec"]["completions"])]
    assert {c["target_platform"] for c in configs} >= {"imx500", "qnnpack"}
    assert len({c["iteration_count"] for c in configs}) >= 2
    base = config_files("base")["configuration.json"]
    for config in configs:  # one model, one data set
        for key in ("source_keras_model", "dataset_image_dir", "evaluate_image_dir", "evaluate_label_file"):
            assert config[key] == base[key]


def test_the_generated_sweep_is_current():
    proc = subprocess.run([sys.executable, str(MAKE_CONFIGS), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _make_configs(tmp_path: Path, runs: list, **extra) -> subprocess.CompletedProcess:
    sweep = {"base_config": str(K8S / "base" / "configuration.json"), "output_root": "/output/x", "runs": runs, **extra}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    return subprocess.run([sys.executable, str(MAKE_CONFIGS), "--sweep", str(tmp_path / "sweep.json"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)


def test_make_configs_writes_one_configuration_per_run(tmp_path):
    runs = [{"name": f"seed-{s}", "set": {"seed": s}} for s in range(4)]
    proc = _make_configs(tmp_path, runs, parallelism=3)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("config-*.json")) == [f"config-{i}.json" for i in range(4)]
    for i in range(4):
        config = json.loads((out / f"config-{i}.json").read_text())
        assert config["seed"] == i and config["output_dir"] == f"/output/x/{i}-seed-{i}/model"
        assert config["evaluate_result_dir"] == f"/output/x/{i}-seed-{i}/evaluation"
    component = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert component["configMapGenerator"][0]["files"] == [f"config-{i}.json" for i in range(4)]
    assert "value: 4" in component["patches"][0]["patch"] and "value: 3" in component["patches"][0]["patch"]
    # Fewer runs later: the configurations left over are removed.
    assert _make_configs(tmp_path, runs[:2]).returncode == 0
    assert sorted(p.name for p in out.glob("config-*.json")) == ["config-0.json", "config-1.json"]


@pytest.mark.parametrize("runs, message", [
    ([{"name": "a", "set": {"output_dir": "/output/same"}}], "derived from its index and name"),
    ([{"name": "a"}, {"name": "a"}], "repeat"),
    ([{"name": "Bad Name"}], "run name"),
    ([{"name": "a", "set": {"target_platform": "gpu"}}], "not valid"),
    ([], "no runs"),
])
def test_make_configs_refuses_sweeps_that_could_collide_or_fail(tmp_path, runs, message):
    proc = _make_configs(tmp_path, runs)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# --- collect_results.py --------------------------------------------------------------------------

def _fake_run(root: Path, name: str, platform: str, accuracy: float, manifest: bool = True,
              gate: dict | None = None) -> None:
    results = {key: accuracy for key in ACCURACY_KEYS} | {"gate": gate}
    results.update(image_count=140, target_platform=platform, seed=0,
                   calibration={"batches": 10, "batch_size": 16, "images_available": 560, "distinct_images_drawn": 160})
    result_file = root / name / "evaluation" / "results.json"
    result_file.parent.mkdir(parents=True)
    result_file.write_text(json.dumps(results))
    if manifest:
        digest = hashlib.sha256(result_file.read_bytes()).hexdigest()
        doc = {"outcome": "success", "config": {"iteration_count": 10, "batch_size": 16, "target_platform": platform},
               "peak_memory_bytes": 700 * 2**20, "stage_seconds": {"model": 1.5, "quantize": 2.0},
               "artifacts": [{"name": "results.json", "path": f"/output/sweep/{name}/evaluation/results.json",
                              "sha256": digest}]}
        (root / name / "model").mkdir()
        (root / name / "model" / "manifest.json").write_text(json.dumps(doc))


def _collect(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COLLECT), str(root), *args], capture_output=True, text=True)


def test_collect_results_makes_one_table(tmp_path):
    _fake_run(tmp_path, "10-qnnpack", "qnnpack", 0.95)
    _fake_run(tmp_path, "2-imx500", "imx500", 0.97)
    proc = _collect(tmp_path, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run"] for r in rows] == ["2-imx500", "10-qnnpack"]  # natural order
    assert rows[0]["target_platform"] == "imx500" and float(rows[0]["tflite_quantized"]) == 0.97
    assert rows[1]["iteration_count"] == "10" and rows[1]["peak_memory_mb"] == "700" and rows[1]["status"] == "ok"
    markdown = _collect(tmp_path).stdout.splitlines()
    assert markdown[0].startswith("| run | target_platform |") and len(markdown) == 4
    assert "| 2-imx500 | imx500 | 10 | 16 | 0 | 140 | 0.9700 |" in markdown[2]


def test_collect_results_shows_each_runs_gate_verdict(tmp_path):
    _fake_run(tmp_path, "0-a", "imx500", 0.9, gate={"passed": True, "top_1_drop": 0.0, "max_top1_drop": 0.01})
    _fake_run(tmp_path, "1-b", "imx500", 0.9, gate={"passed": False, "top_1_drop": 0.2, "max_top1_drop": 0.01})
    _fake_run(tmp_path, "2-c", "imx500", 0.9)
    proc = _collect(tmp_path, "--format", "json")
    assert proc.returncode == 0  # a failed gate is a complete run
    assert [r["gate"] for r in json.loads(proc.stdout)] == ["passed", "failed", None]


def test_collect_results_flags_incomplete_runs(tmp_path):
    _fake_run(tmp_path, "0-a", "imx500", 0.9)
    _fake_run(tmp_path, "1-b", "imx500", 0.9, manifest=False)
    proc = _collect(tmp_path, "--format", "json")
    assert proc.returncode == 1 and "1-b" in proc.stderr
    assert [r["status"] == "ok" for r in json.loads(proc.stdout)] == [True, False]
    assert _collect(tmp_path / "0-a" / "model").returncode == 1  # a manifest without its results.json
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _collect(empty).returncode == 2


# --- the README ------------------------------------------------------------------------------------

def test_the_readme_maps_every_exit_code_to_its_action():
    for entry in EXIT_CODES:
        actions = [pod_failure_action(job(name)["spec"], {CONTAINER: entry.code}) or "(success)" for name in JOBS]
        row = f"| {entry.code} | `{entry.name}` | {actions[0]} | {actions[1]} |"
        assert row in README, f"k8s/README.md lacks the row: {row}"


def test_the_readme_shows_the_commands():
    for text in ("kubectl apply -k k8s/base", "kubectl apply -k k8s/overlays/sweep", "kubectl apply -k k8s/loader",
                 f"logs -f job/{job('base')['metadata']['name']}", f"job/{job('sweep')['metadata']['name']}",
                 "terminated.message", "pod-security.kubernetes.io/enforce: restricted", "peak_memory_bytes",
                 "kubectl cp", "collect_results.py", "make_configs.py", "jq"):
        assert text in README, text


# --- rehearsal with the local Docker engine -----------------------------------------------------------

REHEARSAL_TAG = "mctq-job:k8s-rehearsal"
LOCAL_PARALLELISM = 2  # two cores here


@pytest.fixture(scope="module")
def client():
    from container_support import docker_client

    return docker_client()


@pytest.fixture(scope="module")
def rehearsal_image(client):
    """The image built from the current sources, tagged so that a kustomize `images:` retag
    (what users do for their registry) points the rendered manifests at it."""
    from container_support import image_for_tests

    image = image_for_tests(client).image
    name, _, tag = REHEARSAL_TAG.rpartition(":")
    image.tag(name, tag)
    return image


@pytest.fixture(scope="module")
def data_volume(digits_template, tmp_path_factory) -> Path:
    """The mctq-data volume as k8s/README.md loads it: the example's model/ and dataset/."""
    data = tmp_path_factory.mktemp("pv-data")
    for part in ("model", "dataset"):
        shutil.copytree(digits_template / part, data / part)
    readable_by_all(data)
    return data


@dataclass
class Rehearsal:
    objects: list[dict]
    job: dict
    runs: dict[int, PodRun]
    output: Path                  # the mctq-output volume
    host: dict[str, Path]         # mountPath of each volume -> host folder
    failed: PodRun                # a pod whose configuration does not exist
    tree_before_failure: list[str]

    def to_host(self, path: str) -> Path:
        path = PurePosixPath(path)
        mount = max((m for m in self.host if path.is_relative_to(m)), key=len)
        return self.host[mount] / path.relative_to(mount)


def _claims(spec: dict, data: Path, output: Path) -> dict[str, Path]:
    """The read-only claim gets the loaded data, the writable one an empty volume."""
    mounts = {m["name"]: m for m in the_container(spec)["volumeMounts"]}
    claims = {}
    for volume in spec["volumes"]:
        if "persistentVolumeClaim" in volume:
            read_only = mounts[volume["name"]].get("readOnly") or volume["persistentVolumeClaim"].get("readOnly")
            claims[volume["persistentVolumeClaim"]["claimName"]] = data if read_only else output
    assert sorted(claims.values()) == sorted([data, output]), claims
    return claims


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def rehearsal(client, rehearsal_image, data_volume, tmp_path_factory) -> Rehearsal:
    work = tmp_path_factory.mktemp("k8s-rehearsal")
    objects = kustomize_retagged(KUSTOMIZATIONS["sweep"], REHEARSAL_TAG, work / "kustomize")
    sweep = only(objects, "Job")
    metadata, spec = sweep["spec"]["template"]["metadata"], sweep["spec"]["template"]["spec"]
    assert client.images.get(the_container(spec)["image"]).id == rehearsal_image.id
    output = work / "pv-output"
    output.mkdir()
    output.chmod(0o755)  # a fresh volume: root's, until the kubelet applies fsGroup
    claims = _claims(spec, data_volume, output)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    namespace = sweep["metadata"]["namespace"]

    def run(index: int) -> PodRun:
        return run_pod(client, objects, metadata, spec, claims=claims, workdir=work / f"pod-{index}",
                       completion_index=index, policies=policies, namespace=namespace,
                       labels={"io.mctq-job.k8s-rehearsal.index": str(index)})

    indexes = range(sweep["spec"]["completions"])
    with ThreadPoolExecutor(max_workers=min(sweep["spec"]["parallelism"], LOCAL_PARALLELISM)) as pool:
        runs = dict(zip(indexes, pool.map(run, indexes)))
    before = _tree(output)
    failed = run(sweep["spec"]["completions"])  # an index without a configuration: exit 3
    volumes = {v["name"]: v for v in spec["volumes"]}
    host = {m["mountPath"]: claims[volumes[m["name"]]["persistentVolumeClaim"]["claimName"]]
            for m in the_container(spec)["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]}
    return Rehearsal(objects, sweep, runs, output, host, failed, before)


def _index_config(rehearsal: Rehearsal, index: int) -> dict:
    key, text = config_source(rehearsal.objects, rehearsal.job["spec"]["template"]["spec"], index)
    return json.loads(text)


@pytest.mark.container
def test_rehearsed_sweep_every_index_succeeds(rehearsal):
    spec = rehearsal.job["spec"]
    assert sorted(rehearsal.runs) == list(range(spec["completions"]))
    for index, run in rehearsal.runs.items():
        assert run.exit_code == 0, f"index {index}: {run.explain()}"
        assert pod_failure_action(spec, {CONTAINER: run.exit_code}) is None
        assert re.fullmatch(r"success: keras=[0-9.]+, keras_quantized=[0-9.]+, tflite=[0-9.]+, "
                            r"tflite_quantized=[0-9.]+\n", run.termination_message), run.termination_message
        start, = run.named("run.start")
        args = the_container(rehearsal.job["spec"]["template"]["spec"])["args"]
        assert start["config"] == args[args.index("--config") + 1]  # {index} is filled in by the job
        finish, = run.named("run.finish")
        assert finish["exit_code"] == 0
        config_stage = [e for e in run.named("stage.finish") if e.get("stage") == "config"]
        assert config_stage[0]["config_file"] == config_path(spec["template"]["spec"], index)


@pytest.mark.container
def test_rehearsed_pods_are_as_hardened_as_the_documented_docker_run(rehearsal):
    """What the pod spec gave the engine covers docs/container.md's hardened `docker run` line."""
    from container_support import HARDENED

    for index, run in rehearsal.runs.items():
        given = run.config
        assert given["network_mode"] == HARDENED["network_mode"] and given["read_only"] is HARDENED["read_only"]
        assert set(HARDENED["cap_drop"]) <= set(given["cap_drop"]) and not given.get("cap_add")
        assert set(HARDENED["security_opt"]) <= set(given["security_opt"]) and not given["privileged"]
        tmpfs = {target for target, source, kind, read_only in given["mounts"] if kind == "tmpfs"}
        assert set(HARDENED["tmpfs"]) <= tmpfs, index
        uid, gid = (int(x) for x in given["user"].split(":"))
        assert uid != 0 and given["environment"]["JOB_COMPLETION_INDEX"] == str(index)
        assert ("/config", True) in {(target, read_only) for target, source, kind, read_only in given["mounts"]}
        assert ("/data", True) in {(target, read_only) for target, source, kind, read_only in given["mounts"]}


@pytest.mark.container
def test_rehearsed_sweep_result_sets_are_complete_and_separate(rehearsal):
    uid = rehearsal.job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    expected_files = []
    for index, run in rehearsal.runs.items():
        config = _index_config(rehearsal, index)
        output_dir, result_dir = rehearsal.to_host(config["output_dir"]), rehearsal.to_host(config["evaluate_result_dir"])
        results = json.loads((result_dir / "results.json").read_text())
        for key in ACCURACY_KEYS:
            assert 0.5 < results[key] <= 1.0, (index, key, results[key])
        assert results["target_platform"] == config["target_platform"] and results["seed"] == config["seed"]
        assert results["image_count"] > 0
        manifest = json.loads((output_dir / "manifest.json").read_text())
        assert manifest["outcome"] == "success"
        assert manifest["config_file"] == config_path(rehearsal.job["spec"]["template"]["spec"], index)
        assert manifest["config"]["iteration_count"] == config["iteration_count"]
        names = set()
        for artifact in manifest["artifacts"]:
            local = rehearsal.to_host(artifact["path"])
            assert local.stat().st_size == artifact["size"]
            assert hashlib.sha256(local.read_bytes()).hexdigest() == artifact["sha256"], artifact["path"]
            names.add(artifact["name"])
            expected_files.append(local)
        assert names == set(ARTIFACT_NAMES) - {MANIFEST_FILE}
        expected_files.append(output_dir / "manifest.json")
    # Nothing else anywhere on the volume (no temporary files, no shared folder), all the pod user's.
    assert _tree(rehearsal.output) == sorted(p.relative_to(rehearsal.output).as_posix() for p in expected_files)
    assert {p.stat().st_uid for p in rehearsal.output.rglob("*")} == {uid}
    # Three different result sets: the calibration size and the platform change the quantized model.
    quantized = {(rehearsal.to_host(_index_config(rehearsal, i)["output_dir"]) / "model_quantized.tflite").read_bytes()
                 for i in rehearsal.runs}
    assert len(quantized) == len(rehearsal.runs)


@pytest.mark.container
def test_rehearsed_sweep_fits_the_memory_limit_with_headroom(rehearsal):
    limit = quantity(the_container(rehearsal.job["spec"]["template"]["spec"])["resources"]["limits"]["memory"])
    for index, run in rehearsal.runs.items():
        assert not run.oom_killed
        config = _index_config(rehearsal, index)
        peak = json.loads((rehearsal.to_host(config["output_dir"]) / "manifest.json").read_text())["peak_memory_bytes"]
        assert peak * HEADROOM <= limit, f"index {index}: peak {peak / 2**20:.0f} MiB; limit {limit / 2**20:.0f} MiB"


@pytest.mark.container
def test_rehearsed_sweep_results_collect_into_one_table(rehearsal):
    roots = {rehearsal.to_host(_index_config(rehearsal, i)["output_dir"]).parent.parent for i in rehearsal.runs}
    root, = roots  # the sweep's output_root
    proc = _collect(root, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == len(rehearsal.runs)
    for index, row in zip(sorted(rehearsal.runs), rows):
        config = _index_config(rehearsal, index)
        assert row["run"] == PurePosixPath(config["output_dir"]).parent.name
        assert row["run"].startswith(f"{index}-") and row["status"] == "ok"
        assert row["target_platform"] == config["target_platform"]
        assert int(row["iteration_count"]) == config["iteration_count"]
        for key in ACCURACY_KEYS:
            assert 0.5 < float(row[key.removeprefix("top_1_accuracy_")]) <= 1.0


@pytest.mark.container
def test_rehearsed_permanent_failure_ends_only_its_index(rehearsal):
    """A pod whose configuration is missing (index past the ConfigMap) exits 3; the policy
    fails that index only, the termination message says why, and no file changes."""
    run = rehearsal.failed
    assert run.exit_code == 3, run.explain()
    assert pod_failure_action(rehearsal.job["spec"], {CONTAINER: run.exit_code}) == "FailIndex"
    missing = config_path(rehearsal.job["spec"]["template"]["spec"], rehearsal.job["spec"]["completions"])
    assert run.termination_message.startswith(f"invalid_config (exit 3): configuration file not found: {missing}")
    failed, = run.named("run.failed")
    assert failed["exit_code"] == 3
    assert _tree(rehearsal.output) == rehearsal.tree_before_failure


@pytest.mark.container
def test_rehearsed_base_job_validates_its_configuration(client, rehearsal_image, data_volume, tmp_path):
    """The base Job's pod, with `validate` in place of `run`: its configuration and the data
    volume's layout agree (the full run is the sweep's)."""
    objects = kustomize_retagged(KUSTOMIZATIONS["base"], REHEARSAL_TAG, tmp_path / "kustomize")
    base = only(objects, "Job")
    spec = base["spec"]["template"]["spec"]
    args = the_container(spec)["args"]
    assert args[0] == "run"
    output = tmp_path / "pv-output"
    output.mkdir()
    run = run_pod(client, objects, base["spec"]["template"]["metadata"], spec, claims=_claims(spec, data_volume, output),
                  workdir=tmp_path / "pod", policies=[o for o in objects if o["kind"] == "NetworkPolicy"],
                  namespace=base["metadata"]["namespace"], args_override=["validate", *args[1:]])
    assert run.exit_code == 0, run.explain()
    valid, = run.named("config.valid")
    assert valid["config"] == config_path(spec, None)
    assert _tree(output) == []


def _exec_with_stdin(client, container, command: list[str], data: bytes) -> tuple[int, str, str]:
    """``kubectl exec -i POD -- COMMAND < data`` with the Docker engine: exit code, stdout, stderr."""
    exec_id = client.api.exec_create(container.id, command, stdin=True)["Id"]
    sock = client.api.exec_start(exec_id, socket=True)
    raw = getattr(sock, "_sock", sock)
    raw.sendall(data)
    raw.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := raw.recv(65536):
        received += chunk
    raw.close()
    streams = {1: b"", 2: b""}
    while len(received) >= 8:  # the engine's multiplexed frames: stream, 3 zero bytes, length
        kind, size = received[0], int.from_bytes(received[4:8], "big")
        streams[kind] = streams.get(kind, b"") + received[8:8 + size]
        received = received[8 + size:]
    return (client.api.exec_inspect(exec_id)["ExitCode"], streams[1].decode("utf-8", "replace"),
            streams[2].decode("utf-8", "replace"))


@pytest.mark.container
def test_rehearsed_loader_serves_kubectl_cp_and_collects(client, rehearsal_image, tmp_path):
    """The loader's two jobs: `kubectl cp` into /data (tar in the pod), and collect_results.py
    piped into the image's Python over the read-only /output, as k8s/README.md shows."""
    objects = kustomize_retagged(KUSTOMIZATIONS["loader"], REHEARSAL_TAG, tmp_path / "kustomize")
    pod = only(objects, "Pod")
    data, output = tmp_path / "pv-data", tmp_path / "pv-output"
    data.mkdir()
    output.mkdir()
    _fake_run(output / "sweep", "0-a", "imx500", 0.9)
    readable_by_all(output)
    claims = {v["persistentVolumeClaim"]["claimName"]: (output if v["persistentVolumeClaim"].get("readOnly") else data)
              for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    base_policies = [o for o in rendered("base") if o["kind"] == "NetworkPolicy"]
    container = run_pod(client, objects, pod["metadata"], pod["spec"], claims=claims, workdir=tmp_path / "pod",
                        policies=base_policies, namespace=pod["metadata"]["namespace"], detach=True)
    try:
        archive = io.BytesIO()
        payload = b'{"zero": 0}\n'
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo("dataset/labels.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        # What `kubectl cp ./dataset mctq-loader:/data/dataset` runs in the pod.
        code, out, err = _exec_with_stdin(client, container, ["tar", "--no-same-permissions", "--no-same-owner",
                                                              "-xmf", "-", "-C", "/data"], archive.getvalue())
        assert code == 0, err
        assert (data / "dataset" / "labels.json").read_bytes() == payload
        assert container.exec_run(["touch", "/output/x"]).exit_code != 0
        # kubectl -n mctq exec -i mctq-loader -- python - /output/sweep < k8s/collect_results.py
        code, out, err = _exec_with_stdin(client, container, ["python", "-", "/output/sweep"], COLLECT.read_bytes())
        assert code == 0, err
        assert out.splitlines()[2].startswith("| 0-a | imx500 | 10 | 16 | 0 | 140 | 0.9000 |"), out
    finally:
        container.remove(force=True)
