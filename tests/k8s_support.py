"""Helpers for tests/test_k8s.py: render the kustomizations with kubectl, check pod specs
against the restricted Pod Security Standard, evaluate a Job's podFailurePolicy the way the
Job controller does, and rehearse a pod with the local Docker engine: one container created
from nothing but the rendered pod spec (image, command, args, env, user, security context,
volumes, resources, termination message), as a kubelet would."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


# --- kubectl kustomize ------------------------------------------------------------------------

def required() -> bool:
    """CI (and MCTQ_REQUIRE_DOCKER=1): what cannot run is a failure, never a skip."""
    return os.environ.get("MCTQ_REQUIRE_DOCKER") == "1" or bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    if required():
        pytest.fail(f"MCTQ_REQUIRE_DOCKER=1 or CI is set, yet the Kubernetes tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"{reason} (under MCTQ_REQUIRE_DOCKER=1 or CI this is a failure)")


def kubectl() -> str:
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not path or not os.access(path, os.X_OK):
        unavailable(f"kubectl is not installed{f' (KUBECTL={path})' if path else ''}; `kubectl kustomize` renders "
                    f"the manifests")
    return path


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize FOLDER`` as a list of objects (no cluster is contacted)."""
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {folder} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kustomize_retagged(folder: Path, image: str, workdir: Path) -> list[dict[str, Any]]:
    """Render ``folder`` through a kustomization that only retags the image, as a user does
    for their registry (``images:``): ``image`` is ``name:tag``."""
    name, _, tag = image.rpartition(":")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(folder, workdir)],
        "images": [{"name": "mctq-job", "newName": name, "newTag": tag}],
    }))
    return kustomize(workdir)


def only(objects: Iterable[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def named(objects: Iterable[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"no {kind} {name} among the rendered objects"
    return found[0]


def pod_templates(objects: Iterable[dict]) -> list[tuple[str, dict, dict]]:
    """(``kind/name``, pod metadata, pod spec) of every object that makes pods."""
    found = []
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind == "Pod":
            found.append((f"pod/{obj['metadata']['name']}", obj["metadata"], spec))
        elif kind in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            found.append((f"{kind.lower()}/{obj['metadata']['name']}", spec["template"].get("metadata", {}),
                          spec["template"]["spec"]))
        elif kind == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            found.append((f"cronjob/{obj['metadata']['name']}", template.get("metadata", {}), template["spec"]))
    return found


def quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity as a number: '1Gi' -> 1073741824, '500m' -> 0.5."""
    text = str(text)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)", text)
    assert match and match.group(2) in ("", *suffixes), f"not a quantity: {text!r}"
    return float(match.group(1)) * suffixes.get(match.group(2), 1)


# --- the restricted Pod Security Standard -----------------------------------------------------
# Written from the profile's table (kubernetes.io/docs/concepts/security/pod-security-standards,
# "Restricted", which includes every "Baseline" control), for policy version latest (1.33).

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
CONTAINER_KINDS = ("initContainers", "containers", "ephemeralContainers")


def restricted_violations(spec: dict, metadata: dict | None = None) -> list[str]:
    """Every way ``spec`` (a pod spec) breaks the restricted standard; empty when it passes."""
    problems: list[str] = []
    annotations = (metadata or {}).get("annotations") or {}
    pod_sc = spec.get("securityContext") or {}
    containers = [(f"{kind}[{c.get('name')}]", c) for kind in CONTAINER_KINDS for c in spec.get(kind) or []]

    # Baseline: host namespaces, HostProcess, privileged, host ports, hostPath, /proc, sysctls.
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{key} must be unset or false")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess must be unset or false")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    problems += _selinux("securityContext", pod_sc)
    problems += _apparmor("securityContext", pod_sc)
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            problems.append(f"annotation {key}={value}: AppArmor must be runtime/default or localhost/*")

    # Restricted: volume types.
    for volume in spec.get("volumes") or []:
        types = set(volume) - {"name"}
        if "hostPath" in types:
            problems.append(f"volume {volume.get('name')}: hostPath volumes are forbidden")
        elif not types <= RESTRICTED_VOLUME_TYPES or len(types) != 1:
            problems.append(f"volume {volume.get('name')}: type {sorted(types)} is not one of "
                            f"{sorted(RESTRICTED_VOLUME_TYPES)}")

    # Restricted: seccomp, non-root, no root UID.
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"securityContext.seccompProfile.type {pod_seccomp} must be RuntimeDefault or Localhost")
    if pod_sc.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser must not be 0")
    if pod_sc.get("runAsNonRoot") is False:
        problems.append("securityContext.runAsNonRoot must not be false")

    for where, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: windowsOptions.hostProcess must be unset or false")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort must be unset or 0")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount must be unset or Default")
        problems += _selinux(f"{where}.securityContext", sc)
        problems += _apparmor(f"{where}.securityContext", sc)
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            problems.append(f"{where}: runAsNonRoot must be true (pod or container securityContext)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container), "
                            f"not {seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities.drop must include ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{where}: capabilities.add may hold only NET_BIND_SERVICE, not {sorted(added)}")
    return problems


def _selinux(where: str, sc: dict) -> list[str]:
    options = sc.get("seLinuxOptions") or {}
    problems = []
    if options.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}.seLinuxOptions.type {options['type']} is not allowed")
    for key in ("user", "role"):
        if options.get(key):
            problems.append(f"{where}.seLinuxOptions.{key} must be unset")
    return problems


def _apparmor(where: str, sc: dict) -> list[str]:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    if kind not in (None, "RuntimeDefault", "Localhost"):
        return [f"{where}.appArmorProfile.type {kind} must be RuntimeDefault or Localhost"]
    return []


# --- podFailurePolicy -------------------------------------------------------------------------

def pod_failure_action(job_spec: dict, exit_codes: dict[str, int], conditions: Iterable[str] = ()) -> str | None:
    """What the Job controller does with a finished pod: ``None`` for success, the action of the
    first matching rule, or ``"Count"`` (counts against backoffLimit) when no rule matches.
    ``exit_codes`` maps container name to exit code; ``conditions`` are pod condition types
    whose status is True."""
    if all(code == 0 for code in exit_codes.values()):
        return None
    for rule in (job_spec.get("podFailurePolicy") or {}).get("rules", []):
        on_codes = rule.get("onExitCodes")
        if on_codes is not None:
            name = on_codes.get("containerName")
            codes = [c for n, c in exit_codes.items() if name in (None, n)]
            values = set(on_codes["values"])
            if on_codes["operator"] == "In" and any(c in values for c in codes):
                return rule["action"]
            if on_codes["operator"] == "NotIn" and any(c != 0 and c not in values for c in codes):
                return rule["action"]
        for pattern in rule.get("onPodConditions") or []:
            if pattern.get("status", "True") == "True" and pattern["type"] in set(conditions):
                return rule["action"]
    return "Count"


def pod_failure_policy_problems(job_spec: dict) -> list[str]:
    """The API server's rules for podFailurePolicy and per-index backoff (batch/v1 validation),
    which an offline schema cannot express."""
    problems = []
    policy = job_spec.get("podFailurePolicy")
    template = job_spec["template"]["spec"]
    indexed = job_spec.get("completionMode") == "Indexed"
    per_index = job_spec.get("backoffLimitPerIndex") is not None
    if policy is not None or per_index:
        if template.get("restartPolicy") != "Never":
            problems.append("podFailurePolicy and backoffLimitPerIndex need restartPolicy: Never")
    if per_index and not indexed:
        problems.append("backoffLimitPerIndex needs completionMode: Indexed")
    if job_spec.get("maxFailedIndexes") is not None:
        if not per_index:
            problems.append("maxFailedIndexes needs backoffLimitPerIndex")
        elif job_spec["maxFailedIndexes"] > job_spec.get("completions", 1):
            problems.append("maxFailedIndexes must not exceed completions")
    if per_index and job_spec.get("completions", 1) > 100_000:
        problems.append("completions must be at most 100000 with backoffLimitPerIndex")
    if policy is None:
        return problems
    if job_spec.get("podReplacementPolicy", "Failed") != "Failed":
        problems.append("podReplacementPolicy must be Failed with a podFailurePolicy")
    rules = policy.get("rules", [])
    if len(rules) > 20:
        problems.append("at most 20 podFailurePolicy rules")
    names = {c["name"] for c in template.get("containers", []) + template.get("initContainers", [])}
    for i, rule in enumerate(rules):
        where = f"podFailurePolicy.rules[{i}]"
        if rule.get("action") not in ("FailJob", "FailIndex", "Ignore", "Count"):
            problems.append(f"{where}: unknown action {rule.get('action')}")
        if rule.get("action") == "FailIndex" and not per_index:
            problems.append(f"{where}: FailIndex needs backoffLimitPerIndex")
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            problems.append(f"{where}: exactly one of onExitCodes and onPodConditions")
        on_codes = rule.get("onExitCodes")
        if on_codes:
            values = on_codes.get("values", [])
            if on_codes.get("operator") not in ("In", "NotIn"):
                problems.append(f"{where}: operator must be In or NotIn")
            if not 1 <= len(values) <= 255:
                problems.append(f"{where}: 1 to 255 values")
            if values != sorted(set(values)):
                problems.append(f"{where}: values must be ordered and unique")
            if on_codes.get("operator") == "In" and 0 in values:
                problems.append(f"{where}: 0 cannot be a value of In")
            if on_codes.get("containerName") not in (None, *names):
                problems.append(f"{where}: containerName {on_codes['containerName']} names no container")
        for pattern in rule.get("onPodConditions") or []:
            if pattern.get("status", "True") not in ("True", "False", "Unknown"):
                problems.append(f"{where}: condition status must be True, False or Unknown")
    return problems


# --- network policies -------------------------------------------------------------------------

def selects(policy: dict, labels: dict[str, str]) -> bool:
    selector = policy["spec"].get("podSelector") or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", []),
              "NotIn": not present or value not in expr.get("values", []),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True


def isolated(policies: Iterable[dict], namespace: str | None, labels: dict[str, str]) -> dict[str, bool]:
    """For a pod with ``labels``: whether all its ingress and all its egress are denied (some
    policy selects it for that direction and none of the selecting policies allows any)."""
    result = {}
    for direction, key in (("Ingress", "ingress"), ("Egress", "egress")):
        selecting = [p for p in policies if p["metadata"].get("namespace") == namespace and selects(p, labels)
                     and direction in p["spec"].get("policyTypes", ["Ingress"])]
        result[direction] = bool(selecting) and not any(p["spec"].get(key) for p in selecting)
    return result


# --- a pod rehearsed with Docker --------------------------------------------------------------

@dataclass
class PodRun:
    exit_code: int
    oom_killed: bool
    stdout: str
    stderr: str
    termination_message: str
    config: dict[str, Any] = field(default_factory=dict)  # what was given to the engine, for messages

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    def explain(self) -> str:
        return (f"exit {self.exit_code} (OOM killed: {self.oom_killed})\ntermination message: "
                f"{self.termination_message!r}\n--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n"
                f"{self.stderr[-3000:]}")


class Unsupported(AssertionError):
    """The pod spec uses something the rehearsal cannot reproduce faithfully."""


def config_map_folder(config_map: dict, volume: dict, dest: Path, fs_group: int | None) -> Path:
    """A ConfigMap volume as the kubelet writes it: the files in a timestamped folder, a
    ``..data`` link to it, and one link per key pointing into ``..data``."""
    source = volume["configMap"]
    data = config_map.get("data") or {}
    items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
    stamp = "..{:%Y_%m_%d_%H_%M_%S.%f}".format(datetime.datetime.now(datetime.timezone.utc))
    (dest / stamp).mkdir(parents=True)
    for item in items:
        target = dest / stamp / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]], encoding="utf-8")
        target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
        if fs_group is not None and os.geteuid() == 0:
            os.chown(target, -1, fs_group)
    (dest / "..data").symlink_to(stamp)
    for top in sorted({PurePosixPath(item["path"]).parts[0] for item in items}):
        (dest / top).symlink_to(f"..data/{top}")
    for folder in (dest, dest / stamp):
        folder.chmod(0o755)
    return dest


def apply_fs_group(folder: Path, gid: int | None) -> None:
    """What the kubelet does to a writable volume for fsGroup: group-owned by it, group
    read-write, folders setgid. Without root here: world-writable instead."""
    if gid is None:
        return
    if os.geteuid() != 0:
        folder.chmod(0o777)
        return
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, -1, gid)
        mode = path.stat().st_mode & 0o7777
        path.chmod(mode | (0o2070 if path.is_dir() else 0o060))


def readable_by_all(folder: Path) -> None:
    """A read-only volume whose files were written for any reader (as the loader pod does)."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((path.stat().st_mode & 0o7777) | (0o755 if path.is_dir() else 0o644))


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def run_pod(client: Any, objects: list[dict], pod_metadata: dict, spec: dict, *, claims: dict[str, Path],
            workdir: Path, completion_index: int | None = None, policies: Iterable[dict] = (),
            namespace: str | None = None, args_override: list[str] | None = None, detach: bool = False,
            labels: dict[str, str] | None = None, timeout: float | None = None) -> Any:
    """Run the pod's only container with the local Docker engine, everything taken from the pod
    spec: image (never pulled), command -> entrypoint and args -> cmd, env (plus
    JOB_COMPLETION_INDEX for an Indexed Job's pod), runAsUser:runAsGroup, fsGroup and
    supplementalGroups, read-only root, capabilities, no-new-privileges, seccomp, the volumes
    (ConfigMaps from ``objects`` written as the kubelet writes them, PVCs from ``claims``,
    emptyDirs as tmpfs), memory and CPU limits, and a file at terminationMessagePath.
    Networking: none, which the tests only allow where the NetworkPolicies isolate the pod.
    ``args_override`` replaces the container's args (a rehearsal of another subcommand).
    With ``detach`` the started container is returned, else a :class:`PodRun`."""
    import docker
    from docker.types import Mount

    if spec.get("initContainers") or len(spec.get("containers", [])) != 1:
        raise Unsupported("the rehearsal runs pods with exactly one container and no init containers")
    container = spec["containers"][0]
    pod_sc = spec.get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}

    policy = container.get("imagePullPolicy", "IfNotPresent")
    if policy == "Always":
        raise Unsupported("imagePullPolicy Always: the rehearsal cannot pull")
    try:
        image = client.images.get(container["image"])
    except docker.errors.ImageNotFound:
        raise AssertionError(f"image {container['image']} is not present and no registry can be reached") from None

    env: dict[str, str] = {}
    if completion_index is not None:
        env["JOB_COMPLETION_INDEX"] = str(completion_index)
    for var in container.get("env") or []:
        if "valueFrom" in var:
            ref = (var["valueFrom"].get("fieldRef") or {}).get("fieldPath", "")
            if ref == "metadata.annotations['batch.kubernetes.io/job-completion-index']" and completion_index is not None:
                env[var["name"]] = str(completion_index)
                continue
            raise Unsupported(f"env {var['name']}: valueFrom {var['valueFrom']} is not rehearsed")
        env[var["name"]] = _expand(var.get("value", ""), env)
    if container.get("envFrom"):
        raise Unsupported("envFrom is not rehearsed")
    command = container.get("command")
    args = args_override if args_override is not None else container.get("args")
    entrypoint = [_expand(a, env) for a in command] if command is not None else None
    cmd = [_expand(a, env) for a in args] if args is not None else ([] if command is not None else None)

    uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
    image_user = image.attrs["Config"].get("User") or "0"
    effective_uid = uid if uid is not None else image_user.split(":")[0]
    if sc.get("runAsNonRoot") and str(effective_uid) in ("0", "root"):
        raise AssertionError("runAsNonRoot with a root user: the kubelet would refuse to start the container")
    if uid is None and gid is not None:
        raise Unsupported("runAsGroup without runAsUser is not rehearsed")
    user = None if uid is None else (f"{uid}:{gid}" if gid is not None else str(uid))
    fs_group = pod_sc.get("fsGroup")
    groups = [g for g in [fs_group, *(pod_sc.get("supplementalGroups") or [])] if g is not None]

    seccomp = (sc.get("seccompProfile") or {}).get("type")
    security_opt = []
    if sc.get("allowPrivilegeEscalation") is False:
        security_opt.append("no-new-privileges")
    if seccomp == "Unconfined":
        security_opt.append("seccomp=unconfined")
    elif seccomp == "Localhost":
        raise Unsupported("a Localhost seccomp profile is not rehearsed")
    capabilities = sc.get("capabilities") or {}

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise Unsupported(f"volumeMount {mount['name']}: subPath is not rehearsed")
        volume = volumes[mount["name"]]
        read_only = bool(mount.get("readOnly"))
        if "configMap" in volume:
            config_map = named(objects, "ConfigMap", volume["configMap"]["name"])
            source = config_map_folder(config_map, volume, workdir / "configmaps" / mount["name"], fs_group)
            mounts.append(Mount(mount["mountPath"], str(source), type="bind", read_only=True))
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            read_only = read_only or bool(claim.get("readOnly"))
            source = claims[claim["claimName"]]
            if not read_only:
                apply_fs_group(source, fs_group)
            mounts.append(Mount(mount["mountPath"], str(source), type="bind", read_only=read_only))
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            mounts.append(Mount(mount["mountPath"], None, type="tmpfs", tmpfs_mode=0o1777,
                                tmpfs_size=int(quantity(size)) if size else None))
        else:
            raise Unsupported(f"volume {mount['name']}: type {sorted(set(volume) - {'name'})} is not rehearsed")

    message_path = container.get("terminationMessagePath", "/dev/termination-log")
    message_file = workdir / "termination-log"
    message_file.parent.mkdir(parents=True, exist_ok=True)
    message_file.write_text("")
    message_file.chmod(0o666)  # as the kubelet makes it, so any UID can write it
    mounts.append(Mount(message_path, str(message_file), type="bind"))

    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    options: dict[str, Any] = {}
    if "memory" in limits:
        options["mem_limit"] = options["memswap_limit"] = int(quantity(limits["memory"]))
    if "cpu" in limits:
        options["nano_cpus"] = int(quantity(limits["cpu"]) * 1e9)
    if "cpu" in requests:
        options["cpu_shares"] = max(2, int(quantity(requests["cpu"]) * 1024))

    pod_labels = pod_metadata.get("labels") or {}
    isolation = isolated(policies, namespace, pod_labels)
    if not all(isolation.values()):
        raise Unsupported(f"the pod is not isolated by its NetworkPolicies ({isolation}); the rehearsal has no "
                          f"network to give it")

    config = dict(image=image.id, entrypoint=entrypoint, command=cmd, environment=env, user=user, group_add=groups,
                  read_only=bool(sc.get("readOnlyRootFilesystem")), cap_drop=capabilities.get("drop") or None,
                  cap_add=capabilities.get("add") or None, security_opt=security_opt or None,
                  privileged=bool(sc.get("privileged")), mounts=mounts, network_mode="none",
                  working_dir=container.get("workingDir"), labels={"io.mctq-job.k8s-rehearsal": "1", **(labels or {})},
                  **options)
    created = client.containers.create(**{k: v for k, v in config.items() if v is not None})
    if detach:
        created.start()
        return created
    try:
        created.start()
        status = created.wait(timeout=timeout or spec.get("activeDeadlineSeconds") or 900)
        created.reload()
        stdout = created.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        stderr = created.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        oom = bool(created.attrs["State"].get("OOMKilled"))
    finally:
        created.remove(force=True)
    message = message_file.read_text(encoding="utf-8", errors="replace")[:4096]
    if not message and status["StatusCode"] != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        # The kubelet's fallback: the last 80 lines of the log, at most 2048 bytes.
        message = "\n".join((stdout + stderr).splitlines()[-80:])[-2048:]
    shown = {k: v for k, v in config.items() if k != "mounts"}
    shown["mounts"] = [(m["Target"], m.get("Source"), m["Type"], m.get("ReadOnly", False)) for m in mounts]
    return PodRun(status["StatusCode"], oom, stdout, stderr, message, shown)
