# Container image targets, included by the top-level Makefile (docs/container.md):
#
#   make image           docker build with registry access; BASE_IMAGE=... to override the base
#   make image-offline   no registry: a local Debian base (scripts/build-base-image.sh), then the
#                        same build with that base and --network host (for the package index)
#   make base-image      rebuild the local base unconditionally (image-offline reuses a current one)
#   make docker-demo     the example project (make demo's) run through the image, hardened
#   make image-inputs-digest   print the digest of the image's inputs (the tests look images up by it)
#   make docker-hardened-flags print the hardened `docker run` flags (the tests use them)
#
# Variables: IMAGE (tag, default mctq-job:latest), BASE_IMAGE, OFFLINE_BASE, EXTRA_CA_BUNDLE,
# DOCKER_BUILD_ARGS (extra `docker build` flags, e.g. --build-arg PIP_INDEX_URL=...), DOCKER.

DOCKER            ?= docker
IMAGE             ?= mctq-job:latest
# Empty: the Dockerfile's default (python:3.11-slim-bookworm).
BASE_IMAGE        ?=
OFFLINE_BASE      ?= mctq-base:bookworm
# The host's CA bundle goes into the local base, so pip verifies TLS behind intercepting proxies.
EXTRA_CA_BUNDLE   ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
DOCKER_BUILD_ARGS ?=

# What `docker run` adds for the hardened runs (docker-demo; the tests use the same flags).
DOCKER_HARDENED = --network none --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges

# Everything the image is made from. Its digest is stored as a label, so an image built from
# the current sources can be found (and reused) without building again.
IMAGE_INPUTS = Dockerfile .dockerignore requirements.lock pyproject.toml entrypoint.py
image_inputs_digest = $(shell { sha256sum $(IMAGE_INPUTS); find mctq_job -type f -name '*.py' | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-64)

lock_version   = $(shell sed -n 's/^$(1)==//p' requirements.lock)
image_version  = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' mctq_job/__init__.py)
image_revision = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git status --porcelain -- $(IMAGE_INPUTS) mctq_job 2>/dev/null | grep -q . && echo -dirty)
# Without any credentials an https remote may carry.
image_source   = $(shell git config --get remote.origin.url 2>/dev/null | sed 's|://[^/@]*@|://|')

image_label_args = \
	--build-arg VERSION=$(image_version) \
	--build-arg REVISION=$(image_revision) \
	--build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ) \
	--build-arg "SOURCE=$(image_source)" \
	--build-arg TENSORFLOW_VERSION=$(call lock_version,tensorflow-cpu) \
	--build-arg MCT_VERSION=$(call lock_version,model-compression-toolkit) \
	--build-arg INPUTS_DIGEST=$(image_inputs_digest)

# $(1): base image (empty: the Dockerfile's default); $(2): extra docker build flags.
define build_image
	$(DOCKER) build $(if $(1),--build-arg BASE_IMAGE=$(1)) $(2) $(image_label_args) $(DOCKER_BUILD_ARGS) -t $(IMAGE) .
	@$(DOCKER) image ls --format 'built {{.Repository}}:{{.Tag}} ({{.ID}}, {{.Size}})' $(IMAGE)
endef

.PHONY: image image-offline base-image base-image-if-stale docker-demo image-inputs-digest docker-hardened-flags

image:
	$(call build_image,$(BASE_IMAGE))

image-offline: base-image-if-stale
	$(call build_image,$(OFFLINE_BASE),--network host)

base-image-if-stale:
	REUSE=1 EXTRA_CA_BUNDLE=$(EXTRA_CA_BUNDLE) scripts/build-base-image.sh $(OFFLINE_BASE)

base-image:
	REUSE=0 EXTRA_CA_BUNDLE=$(EXTRA_CA_BUNDLE) scripts/build-base-image.sh $(OFFLINE_BASE)

image-inputs-digest:
	@echo $(image_inputs_digest)

# The one definition of the hardened flags: tests and docs read or are checked against it.
docker-hardened-flags:
	@echo $(DOCKER_HARDENED)

docker-demo: venv
	@test -f $(DEMO)/configuration.json || $(BIN)/python examples/digits.py $(DEMO)
	@$(DOCKER) image inspect $(IMAGE) >/dev/null 2>&1 || { \
	  echo "docker-demo: no image $(IMAGE); build it: make image (or, without registry access, make image-offline)" >&2; exit 1; }
	$(DOCKER) run --rm $(DOCKER_HARDENED) --user "$$(id -u):$$(id -g)" \
	  -v "$(abspath $(DEMO)):/workspace" $(IMAGE) --log-format $${MCTQ_LOG_FORMAT:-console}
	@echo "artifacts: $(DEMO)/output/model.tflite, $(DEMO)/output/model_quantized.tflite, $(DEMO)/output/manifest.json, $(DEMO)/evaluate/results/results.json, $(DEMO)/evaluate/results/report.html"
