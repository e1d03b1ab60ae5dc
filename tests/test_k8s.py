"""The Kubernetes manifests under k8s/ (base, overlays/sweep, overlays/imx500, loader), checked
offline after `kubectl kustomize`, and (marker `container`) the sweep's rendered pod template
run with the real image. Without kubectl, a Docker engine or an image built from the current
sources these tests skip; under CI (or MCTQ_REQUIRE_KUBECTL=1, MCTQ_REQUIRE_DOCKER=1) they
fail, and the image is built when none matches the sources.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path, PurePosixPath

import kubernetes_validate
import needs
import pytest
import yaml
from k8s_support import K8S, kustomize, quantity, restricted_violations, run_pod

from mctq_job.config import PATH_KEYS, Config
from mctq_job.errors import EXIT_CODES

KUSTOMIZATIONS = {
    "base": K8S / "base",
    "sweep": K8S / "overlays" / "sweep",
    "imx500": K8S / "overlays" / "imx500",
    "loader": K8S / "loader",
}
JOBS = ("base", "sweep", "imx500")
#: The oldest Kubernetes the manifests are written for (backoffLimitPerIndex is GA in 1.33)
#: and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
CONTAINER = "mctq-job"
PERMANENT = {e.code for e in EXIT_CODES if e.permanent}
INTERRUPTED = {e.code for e in EXIT_CODES if e.name.startswith("interrupted")}
OUTPUT_KEYS = ("output_dir", "evaluate_result_dir")
NAMESPACE = yaml.safe_load((K8S / "namespace.yaml").read_text())
README = (K8S / "README.md").read_text()
#: A rehearsed run's memory limit must exceed its measured peak by this factor (k8s/README.md).
HEADROOM = 1.25


@cache
def rendered(name: str) -> tuple[dict, ...]:
    return tuple(kustomize(KUSTOMIZATIONS[name]))


def job(name: str) -> dict:
    (found,) = (o for o in rendered(name) if o["kind"] == "Job")
    return found


def pod_templates(name: str) -> list[tuple[dict, dict]]:
    """(metadata, spec) of every pod the kustomization makes: a Job's template or a Pod."""
    return [
        (o["spec"]["template"]["metadata"], o["spec"]["template"]["spec"])
        if o["kind"] == "Job"
        else (o["metadata"], o["spec"])
        for o in rendered(name)
        if o["kind"] in ("Job", "Pod")
    ]


def mounts(spec: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (volumeMount, volume) of the job's container."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    (container,) = (c for c in spec["containers"] if c["name"] == CONTAINER)
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}


def configs_by_index(name: str) -> dict[int | None, tuple[PurePosixPath, dict]]:
    """For each pod of the Job (index None for a non-indexed one): the --config path it reads
    (``{index}`` filled in, as the job does) and that file's configuration, looked up in the
    ConfigMap mounted there."""
    spec = job(name)["spec"]
    args = spec["template"]["spec"]["containers"][0]["args"]
    found = {}
    for index in range(spec["completions"]) if spec.get("completionMode") == "Indexed" else [None]:
        path = PurePosixPath(args[args.index("--config") + 1].replace("{index}", str(index)))
        mount, volume = mounts(spec["template"]["spec"])[str(path.parent)]
        (config_map,) = (o for o in rendered(name) if o["metadata"]["name"] == volume["configMap"]["name"])
        assert path.name in config_map["data"], f"{name}: pod {index} reads {path}, which the ConfigMap lacks"
        found[index] = (path, json.loads(config_map["data"][path.name]))
    return found


# --- rendering and schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_into_the_namespace(name):
    """Each kustomization renders, puts every object into namespace.yaml's namespace, and a Job
    comes with the claims and the deny-all policy it needs."""
    objects = rendered(name)
    assert {o["metadata"].get("namespace") for o in objects} == {NAMESPACE["metadata"]["name"]}
    kinds = sorted(o["kind"] for o in objects)
    expected = ["Pod"] if name == "loader" else ["ConfigMap", "Job", "NetworkPolicy", *["PersistentVolumeClaim"] * 2]
    assert kinds == expected


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", [*KUSTOMIZATIONS, "namespace.yaml"])
def test_every_object_passes_the_kubernetes_schemas_strictly(name, version):
    """Every rendered object (and the namespace) is valid for that Kubernetes version, with
    unknown fields refused."""
    for obj in [NAMESPACE] if name == "namespace.yaml" else rendered(name):
        used = kubernetes_validate.validate(obj, version, strict=True)
        assert used == ".".join(version.split(".")[:2]), f"{obj['kind']} validated against {used}"


def test_strict_validation_refuses_a_misspelt_field():
    """The schema check can fail: a typo in a Job field is an error, not ignored."""
    broken = copy.deepcopy(job("base"))
    broken["spec"]["backofLimit"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --- pod security ------------------------------------------------------------------------------------


def test_the_namespace_enforces_the_restricted_standard():
    """namespace.yaml makes the API server enforce, warn and audit the restricted standard."""
    labels = NAMESPACE["metadata"]["labels"]
    assert all(labels[f"pod-security.kubernetes.io/{mode}"] == "restricted" for mode in ("enforce", "warn", "audit"))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_passes_the_restricted_standard(name):
    """Every pod passes the restricted standard, gets no API token, and has a read-only root
    with an emptyDir at /tmp as its only writable place besides the volumes."""
    for _metadata, spec in pod_templates(name):
        assert restricted_violations(spec) == []
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            (tmp,) = (m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in volumes[tmp["name"]]


VIOLATIONS = {  # a change to the base Job's pod spec (None deletes a field) -> the violation it must produce
    "host-network": ({"pod": {"hostNetwork": True}}, "hostNetwork"),
    "host-path": ({"pod": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}, "volume h"),
    "sysctl": ({"pod_sc": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "sysctls"),
    "pod-uid-0": ({"pod_sc": {"runAsUser": 0}}, "securityContext.runAsUser"),
    "root-allowed": ({"pod_sc": {"runAsNonRoot": None}, "container_sc": {"runAsNonRoot": None}}, "runAsNonRoot"),
    "no-seccomp": ({"pod_sc": {"seccompProfile": None}, "container_sc": {"seccompProfile": None}}, "seccomp"),
    "unconfined": ({"container_sc": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile"),
    "privileged": ({"container_sc": {"privileged": True}}, "privileged"),
    "escalation": ({"container_sc": {"allowPrivilegeEscalation": None}}, "allowPrivilegeEscalation"),
    "caps-kept": ({"container_sc": {"capabilities": {"drop": ["NET_RAW"]}}}, "capabilities"),
    "cap-added": ({"container_sc": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}, "capabilities"),
    "proc-mount": ({"container_sc": {"procMount": "Unmasked"}}, "procMount"),
    "selinux-user": ({"container_sc": {"seLinuxOptions": {"user": "root"}}}, "seLinuxOptions"),
    "apparmor": ({"container_sc": {"appArmorProfile": {"type": "Unconfined"}}}, "appArmorProfile"),
    "host-process": ({"container_sc": {"windowsOptions": {"hostProcess": True}}}, "windowsOptions"),
    "host-port": ({"container": {"ports": [{"containerPort": 80, "hostPort": 80}]}}, "hostPort"),
    "net-bind-service": ({"container_sc": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}, None),
}


def _changed(spec: dict, change: dict[str, dict]) -> dict:
    """A copy of pod spec ``spec`` with the fields of ``change`` set (None: deleted) in the pod
    spec, its securityContext, the container or the container's securityContext."""
    spec = copy.deepcopy(spec)
    container = spec["containers"][0]
    targets = {
        "pod": spec,
        "pod_sc": spec["securityContext"],
        "container": container,
        "container_sc": container["securityContext"],
    }
    for where, fields in change.items():
        targets[where].update(fields)
        for field in [f for f, value in fields.items() if value is None]:
            del targets[where][field]
    return spec


@pytest.mark.parametrize("case", VIOLATIONS)
def test_the_restricted_check_catches_each_violation(case):
    """Each control of the standard fails the base pod when broken; NET_BIND_SERVICE, the one
    capability the standard allows, passes."""
    change, expected = VIOLATIONS[case]
    problems = restricted_violations(_changed(job("base")["spec"]["template"]["spec"], change))
    assert problems == [] if expected is None else any(expected in p for p in problems), problems


def test_the_network_policy_isolates_every_pod():
    """The deny-all policy (both directions, no rule) selects every pod of every kustomization,
    the loader's included (it is applied with the base's volumes)."""
    (policy,) = (o for o in rendered("base") if o["kind"] == "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}
    for name in KUSTOMIZATIONS:
        for metadata, _spec in pod_templates(name):
            assert selector["matchLabels"].items() <= metadata["labels"].items(), name


# --- the Jobs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", JOBS)
def test_the_pod_failure_policy_is_the_exit_code_table(name):
    """The codes EXIT_CODES marks permanent fail the Job at once (FailIndex: only the index, in
    an Indexed Job); interruptions and disruptions are ignored; nothing else has a rule, so it
    counts against the backoff limit. The API server's rules hold: restartPolicy Never,
    values sorted, unique and without 0, FailIndex only with backoffLimitPerIndex."""
    spec = job(name)["spec"]
    fail = "FailIndex" if spec.get("completionMode") == "Indexed" else "FailJob"
    codes: dict[str, set[int]] = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            on_codes = rule["onExitCodes"]
            assert on_codes["operator"] == "In" and on_codes["containerName"] == CONTAINER
            assert on_codes["values"] == sorted(set(on_codes["values"])) and 0 not in on_codes["values"]
            codes.setdefault(rule["action"], set()).update(on_codes["values"])
        else:
            assert rule == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert PERMANENT and codes == {fail: PERMANENT, "Ignore": INTERRUPTED}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert (fail == "FailIndex") == ("backoffLimitPerIndex" in spec)


@pytest.mark.parametrize("name", [*JOBS, "loader"])
def test_every_container_requests_no_more_than_its_limits(name):
    """CPU and memory requests are set and within the limits."""
    for _metadata, spec in pod_templates(name):
        resources = spec["containers"][0]["resources"]
        for key in ("cpu", "memory"):
            assert 0 < quantity(resources["requests"][key]) <= quantity(resources["limits"][key]), key


def test_the_imx500_overlay_is_the_base_job_with_the_converter_image_and_more_memory():
    """The imx500 Job differs from the base Job only in its name, the mctq-job:imx500 image,
    its configuration (which asks for the package) and more memory, request and limit, since
    the converter's models are far larger than the digits demo."""
    base, imx500 = copy.deepcopy(job("base")), copy.deepcopy(job("imx500"))
    differing = []
    for obj in (base, imx500):
        container = obj["spec"]["template"]["spec"]["containers"][0]
        config_volume = mounts(obj["spec"]["template"]["spec"])["/config"][1]
        memory = [quantity(container["resources"][kind].pop("memory")) for kind in ("requests", "limits")]
        differing.append(
            (obj["metadata"].pop("name"), container.pop("image"), memory, config_volume["configMap"].pop("name"))
        )
    assert base == imx500
    (base_name, base_image, base_memory, _), (name, image, memory, _) = differing
    assert name != base_name and image == "mctq-job:imx500" != base_image
    assert all(more > less for more, less in zip(memory, base_memory, strict=True))
    ((path, config),) = configs_by_index("imx500").values()
    assert config["imx500"]["package"] is True


# --- configurations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", JOBS)
def test_every_configuration_is_valid_and_fits_the_mounts(name):
    """Each pod finds its --config file in the ConfigMap; the job's schema accepts it (relative
    paths resolving against /config, as in the pod); inputs lie on read-only volumes and
    outputs on writable ones; the ConfigMap holds no file that no pod reads."""
    spec = job(name)["spec"]["template"]["spec"]
    volumes = {
        PurePosixPath(path): mount.get("readOnly", False)
        for path, (mount, volume) in mounts(spec).items()
        if "persistentVolumeClaim" in volume
    }
    configs = configs_by_index(name)
    for index, (path, data) in configs.items():
        config = Config.model_validate(data, context={"base_dir": Path(path.parent)})
        for key in PATH_KEYS:
            value = PurePosixPath(getattr(config, key))
            read_only = [ro for mount, ro in volumes.items() if value.is_relative_to(mount) and value != mount]
            assert read_only == [key not in OUTPUT_KEYS], f"{name} pod {index}: {key}={value}"
    (config_map,) = (o for o in rendered(name) if o["kind"] == "ConfigMap")
    assert set(config_map["data"]) == {path.name for path, data in configs.values()}


def test_no_two_runs_share_an_output_folder():
    """Across every pod of every Job (they share the mctq-output volume), no output folder
    equals or contains another: no two runs write or lock the same folder."""
    folders = [
        (f"{name} pod {index} {key}", PurePosixPath(config[key]))
        for name in JOBS
        for index, (path, config) in configs_by_index(name).items()
        for key in OUTPUT_KEYS
    ]
    for i, (where_a, a) in enumerate(folders):
        for where_b, b in folders[i + 1 :]:
            assert not (a.is_relative_to(b) or b.is_relative_to(a)), f"{where_a}={a} and {where_b}={b}"


def test_the_sweep_runs_each_configuration_of_sweep_json_once():
    """The sweep has one index per run of sweep.json, no two indexes run the same
    configuration, and generated/ is what make_configs.py makes of sweep.json."""
    spec = job("sweep")["spec"]
    runs = json.loads((KUSTOMIZATIONS["sweep"] / "sweep.json").read_text())["runs"]
    assert spec["completions"] == len(runs) and 1 <= spec["parallelism"] <= spec["completions"]
    settings = {
        json.dumps({k: v for k, v in config.items() if k not in OUTPUT_KEYS}, sort_keys=True)
        for path, config in configs_by_index("sweep").values()
    }
    assert len(settings) == len(runs)
    check = subprocess.run(
        [sys.executable, str(KUSTOMIZATIONS["sweep"] / "make_configs.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


# --- k8s/README.md -----------------------------------------------------------------------------------


def test_the_readme_maps_every_exit_code_to_its_action():
    """k8s/README.md's table gives, per exit code, the action of the first matching rule of the
    base Job and of the sweep (Count where none matches)."""

    def action(spec: dict, code: int) -> str:
        rules = [r for r in spec["podFailurePolicy"]["rules"] if code in r.get("onExitCodes", {}).get("values", [])]
        return "(success)" if code == 0 else rules[0]["action"] if rules else "Count"

    for entry in EXIT_CODES:
        row = (
            f"| {entry.code} | `{entry.name}` | {action(job('base')['spec'], entry.code)} | "
            f"{action(job('sweep')['spec'], entry.code)} |"
        )
        assert row in README, f"k8s/README.md lacks the row: {row}"


# --- rehearsal: the sweep's pod template run with the real image ------------------------------------------


@pytest.fixture(scope="module")
def rehearsal(request, tmp_path_factory):
    """Each index of the rendered sweep run as a pod (two at a time, as on two cores), on a
    data volume holding the digits example (and, under detection/, a small build of
    examples/detection.py for the sweep's detection run) and an empty output volume."""
    from container_support import docker_client, find_image, image_for_tests, inputs_digest, unavailable

    client = docker_client()
    # The image built from the current sources stands in for the template's mctq-job:latest,
    # as a kustomize `images:` retag would; CI builds it when missing, a local run skips.
    if needs.required("docker") or os.environ.get("MCTQ_TEST_IMAGE"):
        image = image_for_tests(client).image
    else:
        image = find_image(client, inputs_digest()) or unavailable(
            "no image built from the current sources; `make image-offline` builds mctq-job:latest"
        )
    digits_template = request.getfixturevalue("digits_template")  # only once there is an image to run
    work = tmp_path_factory.mktemp("k8s-rehearsal")
    data, output = work / "pv-data", work / "pv-output"
    for part in ("model", "dataset"):
        shutil.copytree(digits_template / part, data / part)
    if any(config.get("task") == "detection" for path, config in configs_by_index("sweep").values()):
        from test_detection_example import detection

        detection.build(
            data / "detection", n_train=300, epochs=4, n_eval=16, n_calibration=16, ssd=False, log=lambda _: None
        )
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    spec = job("sweep")["spec"]["template"]["spec"]
    output.mkdir()
    if os.geteuid() == 0:  # what the kubelet does for fsGroup
        os.chown(output, -1, spec["securityContext"]["fsGroup"])
        output.chmod(0o2775)
    else:
        output.chmod(0o777)
    claims = {"mctq-data": data, "mctq-output": output}

    def run(index):
        return run_pod(
            client, image, list(rendered("sweep")), spec, claims=claims, workdir=work / str(index), index=index
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(enumerate(pool.map(run, range(job("sweep")["spec"]["completions"]))))
    return runs, output


def _on_volume(output: Path, path: str) -> Path:
    return output / PurePosixPath(path).relative_to("/output")


@pytest.mark.container
def test_rehearsed_sweep_every_index_runs_its_own_configuration_within_its_limit(rehearsal):
    """Every pod exits 0 having read its own config-<index>.json (through the ConfigMap's
    symbolic links), leaves its one-line summary at terminationMessagePath, and was not
    OOM-killed: its measured peak times 1.25 stays within the memory limit."""
    runs, output = rehearsal
    limit = quantity(job("sweep")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    for index, (path, config) in configs_by_index("sweep").items():
        run = runs[index]
        assert run.exit_code == 0 and not run.oom_killed, f"index {index}: {run.explain()}"
        (read,) = (e for e in run.named("stage.finish") if e.get("stage") == "config")
        assert read["config_file"] == str(path)
        first = "map_50_95_keras" if config.get("task") == "detection" else "keras"
        assert run.termination_message.startswith(f"success: {first}="), run.termination_message
        peak = json.loads((_on_volume(output, config["output_dir"]) / "manifest.json").read_text())["peak_memory_bytes"]
        assert peak * HEADROOM <= limit, f"index {index}: peak {peak / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB"


@pytest.mark.container
def test_rehearsed_sweep_writes_each_result_set_to_its_own_folders_only(rehearsal):
    """Each index's manifest.json and results.json lie in its configured folders, owned by the
    pod's user; the volume holds nothing else; collect_results.py tabulates every index."""
    runs, output = rehearsal
    uid = job("sweep")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    folders = {
        _on_volume(output, config[key]) for path, config in configs_by_index("sweep").values() for key in OUTPUT_KEYS
    }
    for path, config in configs_by_index("sweep").values():
        manifest = json.loads((_on_volume(output, config["output_dir"]) / "manifest.json").read_text())
        assert manifest["outcome"] == "success" and manifest["config_file"] == str(path)
        assert (_on_volume(output, config["evaluate_result_dir"]) / "results.json").is_file()
    files = [p for p in output.rglob("*") if p.is_file()]
    assert files and all(any(f.is_relative_to(folder) for folder in folders) for f in files), files
    assert {f.stat().st_uid for f in files} == {uid}
    table = subprocess.run(
        [sys.executable, str(K8S / "collect_results.py"), str(output), "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert table.returncode == 0, table.stderr
    rows = json.loads(table.stdout)
    assert len(rows) == len(runs)
    for row in rows:  # classification runs with their top-1, detection runs with their mAP
        figures = ("map_50_95_keras", "map_50_tflite_quantized") if row.get("task") == "detection" else ("keras",)
        assert all(row[figure] is not None for figure in figures), row
