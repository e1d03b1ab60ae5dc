# mctq-job: quantize a Keras image classifier with MCT, export TFLite, measure accuracy.
# Build:  docker build -t mctq-job .          (or `make image`; offline sites: `make image-offline`)
# Run:    docker run --rm -v "$PWD:/workspace" mctq-job        (see docs/container.md)
#
# Written for both the legacy builder and BuildKit: no RUN --mount, no heredocs, no COPY --chmod.

# Any Debian-based image with Python 3.11 (python3 on PATH, venv module) works, e.g. the
# local mctq-base:bookworm from scripts/build-base-image.sh. Both stages use the same base,
# so the venv's interpreter link (/usr/local/bin or /usr/bin) resolves in the runtime stage.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# A private package index (mirror or proxy) for sites without the public one; these ARGs
# exist only in this stage, so they never reach the runtime image or its history.
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
# The CA bundle pip verifies TLS with. Default: the system bundle, which carries any
# EXTRA_CA_BUNDLE the local base image was built with (the venv's pip would use certifi's).
ARG PIP_CERT

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The venv is made from the lock file only: exactly the pinned versions, no resolver. This
# layer depends on requirements.lock alone, so a change to the job's code never rebuilds it.
COPY requirements.lock /tmp/requirements.lock
RUN set -eu; \
    if [ -z "${PIP_CERT:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then \
        export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; \
    fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --quiet --no-deps --only-binary :all: -r /tmp/requirements.lock; \
    /opt/venv/bin/pip check; \
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    # The job's code (copied below) is on the venv's path, so `python -m mctq_job` works too.
    echo /opt/mctq-job > "$site/mctq_job.pth"; \
    # Trim what the job never uses: test suites, TensorFlow's C++ headers (for building custom
    # ops), Cython and C sources, static libraries, the solver binaries for other systems.
    find /opt/venv -depth -type d -name tests -exec rm -rf {} +; \
    rm -rf "$site/tensorflow/include" "$site/pulp/solverdir/cbc/osx" "$site/pulp/solverdir/cbc/win"; \
    find /opt/venv -type f \( -name '*.a' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.cpp' \) -delete; \
    # Byte-code stays where the job uses it (without it TensorFlow's import takes twice as
    # long); the packages that importing TensorFlow, MCT and the job's direct dependencies
    # never touches (the same set a whole run touches: pip, fontTools, scikit-image...) lose
    # theirs, about 30 MB. Should one be imported after all, Python compiles it in memory.
    /opt/venv/bin/python -c 'import pathlib, shutil, sys, sysconfig; \
import tensorflow, model_compression_toolkit, numpy, PIL.Image, click, structlog, pydantic, tqdm; \
site = pathlib.Path(sysconfig.get_paths()["purelib"]); \
files = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]; \
used = {pathlib.Path(f).relative_to(site).parts[0] for f in files if f.startswith(str(site) + "/")}; \
idle = sorted(p for p in site.iterdir() if p.is_dir() and p.name not in used and "." not in p.name and p.name != "__pycache__"); \
[shutil.rmtree(c) for p in idle for c in list(p.rglob("__pycache__"))]; \
print("byte-code removed from the packages the job never imports:", *(p.name for p in idle))'; \
    chmod -R a+rX,go-w /opt/venv

# The job itself: plain source beside entrypoint.py, byte-compiled (hash-checked, so copies
# that change mtimes keep it valid); not installed as a distribution, so `pip freeze` in the
# image lists exactly requirements.lock (plus pip).
COPY entrypoint.py /opt/mctq-job/entrypoint.py
COPY mctq_job/ /opt/mctq-job/mctq_job/
RUN set -eu; \
    /opt/venv/bin/python -m compileall -q --invalidation-mode checked-hash /opt/mctq-job; \
    chmod -R a+rX,go-w /opt/mctq-job; \
    /opt/venv/bin/python /opt/mctq-job/entrypoint.py version

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

# tini as PID 1 forwards SIGTERM (docker stop, Kubernetes) to the job and reaps zombies.
# The local base has it; Debian-based python images get it from the distribution.
RUN if ! command -v tini >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends tini && \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    test -x /usr/bin/tini

# A fixed non-root user (UID 10001, group 0), yet any UID works: Kubernetes' runAsUser and
# OpenShift's random UIDs run with GID 0, so HOME and /workspace are group-0 writable, and
# every cache a library may want goes to /tmp (a tmpfs under --read-only).
RUN set -eu; \
    echo 'mctq:x:10001:0:mctq-job:/home/mctq:/usr/sbin/nologin' >> /etc/passwd; \
    install -d -o 10001 -g 0 -m 2775 /home/mctq; \
    install -d -o 10001 -g 0 -m 2775 /workspace

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/mctq-job /opt/mctq-job

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/home/mctq \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MCTQ_UMASK=002 \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/.matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

USER 10001:0
WORKDIR /workspace
# Arguments of `docker run IMAGE ...` go to the job (`version`, `--config /config/x.json`...);
# the empty CMD drops the base image's own (bash, python3), which would be passed otherwise.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/python", "/opt/mctq-job/entrypoint.py"]
CMD []

# Labels last, so a new commit or build date never invalidates the cached layers above.
# `make image` fills them from git, mctq_job/__init__.py and requirements.lock.
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=
ARG TENSORFLOW_VERSION=unknown
ARG MCT_VERSION=unknown
ARG INPUTS_DIGEST=unknown
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="mctq-job" \
      org.opencontainers.image.description="Quantize a Keras image classifier with Sony's Model Compression Toolkit, export TFLite and evaluate accuracy, driven by configuration.json." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.mctq-job.tensorflow.version="${TENSORFLOW_VERSION}" \
      io.mctq-job.model-compression-toolkit.version="${MCT_VERSION}" \
      io.mctq-job.inputs-digest="${INPUTS_DIGEST}"
