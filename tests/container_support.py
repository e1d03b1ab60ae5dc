"""Helpers for tests/test_container.py: reach the Docker engine (or skip, or fail under
MCTQ_REQUIRE_DOCKER=1), find or build the image through the Makefile's own recipe, and run
containers with the docker SDK the way users run them with the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import needs
import pytest
from conftest import check_published_documents

ROOT = Path(__file__).resolve().parent.parent
DIGEST_LABEL = "io.mctq-job.inputs-digest"
IMX500_CONVERTER_LABEL = "io.mctq-job.imx500-converter.version"  # only on images with Sony's converter


def hardened_flags() -> list[str]:
    """The hardened `docker run` flags, from their one definition (mk/container.mk)."""
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "docker-hardened-flags"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def sdk_options(flags: list[str]) -> dict[str, Any]:
    """`docker run` flags as docker SDK arguments (only the flags the hardened line uses)."""
    options: dict[str, Any] = {}
    pairs = iter(flags)
    for flag in pairs:
        if flag == "--read-only":
            options["read_only"] = True
        elif flag == "--network":
            options["network_mode"] = next(pairs)
        elif flag == "--tmpfs":
            options.setdefault("tmpfs", {})[next(pairs)] = ""
        elif flag == "--cap-drop":
            options.setdefault("cap_drop", []).append(next(pairs))
        elif flag == "--security-opt":
            options.setdefault("security_opt", []).append(next(pairs))
        else:
            raise ValueError(f"sdk_options does not know the docker run flag {flag}")
    return options


HARDENED = sdk_options(hardened_flags())


def unavailable(reason: str) -> NoReturn:
    needs.unavailable("docker", reason, "scripts/start-docker.sh installs and starts an engine (as root)")


def docker_client() -> Any:
    try:
        import docker
    except ImportError as exc:
        unavailable(f"the docker SDK for Python is not installed ({exc}); run `make venv`")
    try:
        client = docker.from_env(timeout=900)
        client.ping()
    except Exception as exc:  # DockerException, connection refused, permission denied...
        unavailable(f"no Docker engine is reachable ({type(exc).__name__}: {exc})")
    return client


def make(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def inputs_digest() -> str:
    """The digest of the image's inputs, computed by the Makefile (the one definition)."""
    proc = make("-s", "image-inputs-digest")
    assert proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", proc.stdout.strip()), proc.stderr
    return proc.stdout.strip()


def find_image(client: Any, digest: str) -> Any | None:
    """The newest job image built from exactly these inputs, tagged or not. Not an image built
    FROM it (mctq-job:imx500 made by an older Dockerfile.imx500 inherited the label)."""
    found = [
        image
        for image in client.images.list(filters={"label": f"{DIGEST_LABEL}={digest}"})
        if IMX500_CONVERTER_LABEL not in image.labels
    ]
    return max(found, key=lambda image: image.attrs["Created"]) if found else None


@dataclass
class Built:
    image: Any
    digest: str | None
    reused: bool
    seconds: float


def image_for_tests(client: Any) -> Built:
    """MCTQ_TEST_IMAGE if set; else an image whose inputs digest matches the sources; else
    build one with `make image-offline` (MCTQ_TEST_IMAGE_TARGET=image for a registry build),
    the recipe CI and users share."""
    began = time.monotonic()
    named = os.environ.get("MCTQ_TEST_IMAGE")
    if named:
        import docker

        try:
            return Built(client.images.get(named), None, True, 0.0)
        except docker.errors.ImageNotFound:
            pytest.fail(f"MCTQ_TEST_IMAGE={named}: no such image", pytrace=False)
    digest = inputs_digest()
    image = find_image(client, digest)
    if image is not None:
        return Built(image, digest, True, time.monotonic() - began)
    target = os.environ.get("MCTQ_TEST_IMAGE_TARGET", "image-offline")
    proc = make(target)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        pytest.fail(f"`make {target}` failed (exit {proc.returncode}):\n{tail}", pytrace=False)
    image = find_image(client, digest)
    assert image is not None, f"`make {target}` built no image labelled {DIGEST_LABEL}={digest}"
    return Built(image, digest, False, time.monotonic() - began)


IMX500_IMAGE = "mctq-job:imx500"


def imx500_image_for_tests(client: Any, job_image: Any) -> Any:
    """mctq-job:imx500 built FROM ``job_image`` with the Makefile's own recipe (`make
    image-imx500`); docker's layer cache makes a rebuild on an unchanged base quick."""
    job_image.tag("mctq-job", "imx500-test-base")
    proc = make("image-imx500", "IMAGE=mctq-job:imx500-test-base", f"IMX500_IMAGE={IMX500_IMAGE}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        pytest.fail(f"`make image-imx500` failed (exit {proc.returncode}):\n{tail}", pytrace=False)
    return client.images.get(IMX500_IMAGE)


@dataclass
class ContainerRun:
    exit_code: int
    stdout: str
    stderr: str
    streamed: list[dict] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.strip()]

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    def explain(self) -> str:
        return (
            f"exit {self.exit_code}\n--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n{self.stderr[-3000:]}"
        )


def run_container(
    client: Any,
    image: Any,
    command: list[str] | None = None,
    *,
    mounts: dict[Path, str] | None = None,
    user: str | None = None,
    hardened: bool = False,
    entrypoint: list[str] | None = None,
    until: Callable[[dict], bool] | None = None,
    then: Callable[[Any], None] | None = None,
    timeout: float = 900,
) -> ContainerRun:
    """``docker run`` (network none always; the hardened flags on request). ``mounts`` maps a
    host folder to ``/path`` or ``/path:ro``. With ``until``, stdout is followed line by line
    and ``then(container)`` is called at the first event it accepts (e.g. to stop it)."""
    volumes = {}
    for host, spec in (mounts or {}).items():
        bind, _, mode = spec.partition(":")
        volumes[str(host)] = {"bind": bind, "mode": mode or "rw"}
    options: dict[str, Any] = dict(HARDENED) if hardened else {"network_mode": "none"}
    if user is not None:
        options["user"] = user
    if entrypoint is not None:
        options["entrypoint"] = entrypoint
    container = client.containers.create(image.id, command=command or [], volumes=volumes, **options)
    streamed: list[dict] = []
    try:
        container.start()
        if until is not None:
            buffer = b""
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=False):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                events = [json.loads(line) for line in complete if line.strip()]
                streamed += events
                if any(until(e) for e in events):
                    then(container)
                    break
        status = container.wait(timeout=timeout)
        stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        stderr = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        check_published_documents(stdout.splitlines(), {spec["bind"]: Path(host) for host, spec in volumes.items()})
        return ContainerRun(status["StatusCode"], stdout, stderr, streamed)
    finally:
        container.remove(force=True)


def make_group0_writable(folder: Path) -> None:
    """What a platform does for a volume (fsGroup, OpenShift): writable by GID 0, the group
    every UID runs with in the image. Without root, world-writable instead."""
    if os.geteuid() == 0:
        os.chown(folder, -1, 0)
        folder.chmod(0o775)
    else:
        folder.chmod(0o777)


def host_user() -> tuple[int, int]:
    """The caller's uid:gid; as root, a stand-in ordinary user, so the check means something."""
    uid, gid = os.getuid(), os.getgid()
    return (23456, 23456) if uid == 0 else (uid, gid)


def lock_pins(path: Path = ROOT / "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()
