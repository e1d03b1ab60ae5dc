"""Helpers for tests/test_k8s.py: render a kustomization with kubectl, list the restricted Pod
Security Standard's violations in a pod spec, and run a rendered pod template's container with
the Docker engine, set up from the pod spec as a kubelet would set it up."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import needs
import yaml
from conftest import check_published_documents
from container_support import ContainerRun

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


def kubectl() -> str:
    """kubectl's path; without it the test skips, or fails under CI or MCTQ_REQUIRE_KUBECTL=1."""
    path = shutil.which(os.environ.get("KUBECTL", "kubectl"))
    return path or needs.unavailable(
        "kubectl",
        "kubectl is not installed",
        "`kubectl kustomize` renders the manifests; install kubectl 1.27 or newer",
    )


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize FOLDER`` renders (no cluster is contacted)."""
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {folder} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def quantity(text: str | int) -> float:
    """A Kubernetes resource quantity as a number: '1Gi' -> 1073741824, '500m' -> 0.5."""
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units[unit]


# --- the restricted Pod Security Standard ---------------------------------------------------------
# Each security-context field the standard constrains, with the values it allows. A container
# inherits these from the pod's securityContext; a value set on the pod must be allowed too.
INHERITED = {
    "runAsNonRoot": lambda v: v is True,
    "runAsUser": lambda v: v != 0,
    "seccompProfile": lambda v: (v or {}).get("type") in ("RuntimeDefault", "Localhost"),
    "appArmorProfile": lambda v: (v or {}).get("type", "RuntimeDefault") in ("RuntimeDefault", "Localhost"),
    "seLinuxOptions": lambda v: (
        not {"user", "role"} & set(v or {})
        and (v or {}).get("type", "")
        in ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
    ),
    "windowsOptions": lambda v: not (v or {}).get("hostProcess"),
}
CONTAINER_ONLY = {
    "privileged": lambda v: not v,
    "allowPrivilegeEscalation": lambda v: v is False,
    "procMount": lambda v: v in (None, "Default"),
    "capabilities": lambda v: (
        "ALL" in (v or {}).get("drop", []) and set((v or {}).get("add", [])) <= {"NET_BIND_SERVICE"}
    ),
}
VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: dict) -> list[str]:
    """The fields of pod spec ``spec`` that break the restricted standard; empty when it passes.
    Stricter than the standard in one place: any sysctl is refused, not only unsafe ones."""
    pod_sc = spec.get("securityContext") or {}
    found = [key for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    found += [f"volume {v['name']}" for v in spec.get("volumes") or [] if not set(v) - {"name"} <= VOLUME_TYPES]
    found += ["securityContext.sysctls"] if pod_sc.get("sysctls") else []
    found += [
        f"securityContext.{key}" for key, allowed in INHERITED.items() if key in pod_sc and not allowed(pod_sc[key])
    ]
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or []:
            sc = container.get("securityContext") or {}
            effective = {key: sc.get(key, pod_sc.get(key)) for key in INHERITED} | {
                k: sc.get(k) for k in CONTAINER_ONLY
            }
            found += [
                f"{container['name']}.{key}"
                for key, allowed in (INHERITED | CONTAINER_ONLY).items()
                if not allowed(effective[key])
            ]
            found += [f"{container['name']}.hostPort" for port in container.get("ports") or [] if port.get("hostPort")]
    return found


# --- a pod template run with Docker ---------------------------------------------------------------


@dataclass
class PodRun(ContainerRun):
    termination_message: str = ""
    oom_killed: bool = False


def config_map_volume(config_map: dict, default_mode: int, dest: Path) -> Path:
    """A ConfigMap volume laid out as the kubelet writes it: the files in a timestamped folder,
    ``..data`` linking to it, and each key a link through ``..data`` (so every file the job
    reads under /config is a symbolic link)."""
    stamp = f"..{datetime.datetime.now(datetime.UTC):%Y_%m_%d_%H_%M_%S.%f}"
    (dest / stamp).mkdir(parents=True)
    for key, text in config_map["data"].items():
        (dest / stamp / key).write_text(text, encoding="utf-8")
        (dest / stamp / key).chmod(default_mode)
        (dest / key).symlink_to(f"..data/{key}")
    (dest / "..data").symlink_to(stamp)
    for folder in (dest, dest / stamp):
        folder.chmod(0o755)
    return dest


def _mount(mount: dict, volume: dict, objects: list[dict], claims: dict[str, Path], workdir: Path) -> Any:
    from docker.types import Mount

    if "configMap" in volume:
        (config_map,) = (
            o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
        )
        source = config_map_volume(config_map, volume["configMap"].get("defaultMode", 0o644), workdir / mount["name"])
        return Mount(mount["mountPath"], str(source), type="bind", read_only=True)
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]
        read_only = bool(mount.get("readOnly") or claim.get("readOnly"))
        return Mount(mount["mountPath"], str(claims[claim["claimName"]]), type="bind", read_only=read_only)
    size = volume["emptyDir"].get("sizeLimit")
    return Mount(
        mount["mountPath"], None, type="tmpfs", tmpfs_mode=0o1777, tmpfs_size=int(quantity(size)) if size else None
    )


def run_pod(
    client: Any,
    image: Any,
    objects: list[dict],
    spec: dict,
    *,
    claims: dict[str, Path],
    workdir: Path,
    index: int,
    timeout: float = 900,
) -> PodRun:
    """Run the only container of pod spec ``spec`` (an Indexed Job's pod ``index``) in
    ``image``, taking from the spec: command and args, env plus JOB_COMPLETION_INDEX, user,
    group and fsGroup, read-only root, dropped capabilities, no new privileges, the volumes
    (ConfigMaps from ``objects``, claims from the host folders in ``claims``, emptyDirs as
    tmpfs), the CPU and memory limits and a file at terminationMessagePath. No network: the
    NetworkPolicy gives the pod none."""
    from docker.types import Mount

    (container,) = spec["containers"]
    pod_sc, sc = spec["securityContext"], container["securityContext"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    workdir.mkdir(parents=True)
    mounts = [_mount(m, volumes[m["name"]], objects, claims, workdir) for m in container["volumeMounts"]]
    message = workdir / "termination-log"
    message.write_text("")
    message.chmod(0o666)  # as the kubelet makes it: writable whatever the UID
    mounts.append(Mount(container["terminationMessagePath"], str(message), type="bind"))
    limits = container["resources"]["limits"]
    created = client.containers.create(
        image.id,
        entrypoint=container.get("command"),
        command=container.get("args"),
        environment={"JOB_COMPLETION_INDEX": str(index), **{v["name"]: v["value"] for v in container.get("env", [])}},
        user=f"{sc.get('runAsUser', pod_sc['runAsUser'])}:{sc.get('runAsGroup', pod_sc['runAsGroup'])}",
        group_add=[str(pod_sc["fsGroup"])],
        read_only=sc["readOnlyRootFilesystem"],
        cap_drop=sc["capabilities"]["drop"],
        security_opt=["no-new-privileges"] if sc["allowPrivilegeEscalation"] is False else [],
        network_mode="none",
        mounts=mounts,
        mem_limit=int(quantity(limits["memory"])),
        memswap_limit=int(quantity(limits["memory"])),
        nano_cpus=int(quantity(limits["cpu"]) * 1e9),
    )
    try:
        created.start()
        status = created.wait(timeout=timeout)
        created.reload()
        stdout = created.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        stderr = created.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        oom = bool(created.attrs["State"].get("OOMKilled"))
        bound = {m["Target"]: Path(m["Source"]) for m in mounts if m.get("Type") == "bind"}
        check_published_documents(stdout.splitlines(), bound)
    finally:
        created.remove(force=True)
    return PodRun(status["StatusCode"], stdout, stderr, termination_message=message.read_text(), oom_killed=oom)
