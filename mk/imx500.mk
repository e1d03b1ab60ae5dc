# Sony's IMX500 converter (imxconv-tf), included by the top-level Makefile (docs/imx500.md):
#
#   make imx500-venv     .venv-imx500 from requirements-imx500.lock, plus Java 17 (the converter
#                        runs a Java back end); as root, Debian's openjdk-17-jre-headless is
#                        installed when no java is on PATH
#   make image-imx500    mctq-job:imx500: the job image (make image-offline) plus Java and the
#                        converter's venv, with MCTQ_IMXCONV pointing at imxconv-tf
#
# The converter's licence allows its use but not its redistribution, so it has its own venv and
# its own image tag; the default image never contains it.

PYTHON       ?= python3.11
DOCKER       ?= docker
IMAGE        ?= mctq-job:latest
IMX500_VENV  ?= .venv-imx500
IMX500_IMAGE ?= mctq-job:imx500

.PHONY: imx500-venv imx500-java image-imx500

imx500-venv: $(IMX500_VENV)/.installed imx500-java

# Made from the lock alone (no resolver), like the job's venv; rebuilt when the lock changes.
# The converter pins its own TensorFlow and mct-quantizers, which the job's venv cannot share.
$(IMX500_VENV)/.installed: requirements-imx500.lock
	rm -rf $(IMX500_VENV)
	$(PYTHON) -m venv $(IMX500_VENV)
	$(IMX500_VENV)/bin/pip install --quiet --no-deps -r requirements-imx500.lock
	$(IMX500_VENV)/bin/pip check
	touch $@

# Java 17 or newer on PATH: the converter was measured here with Debian's OpenJDK 17.
java_major = java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1

imx500-java:
	@if [ "$$($(java_major))" -ge 17 ] 2>/dev/null; then :; \
	 elif [ "$$(id -u)" = 0 ]; then \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; \
	 else echo "make: the IMX500 converter needs Java 17 or newer: sudo apt-get install openjdk-17-jre-headless" >&2; exit 1; fi
	@java -version 2>&1 | head -1

# FROM the job image, which `make image-offline` (or `make image`) builds; its inputs are
# Dockerfile.imx500 and requirements-imx500.lock only (a context of two files).
image-imx500:
	@$(DOCKER) image inspect $(IMAGE) >/dev/null 2>&1 || { \
	  echo "image-imx500: no job image $(IMAGE); build it first: make image-offline (or make image)" >&2; exit 1; }
	tar -c Dockerfile.imx500 requirements-imx500.lock | \
	  $(DOCKER) build --network host --build-arg JOB_IMAGE=$(IMAGE) \
	    --build-arg IMX500_CONVERTER_VERSION=$(shell sed -n 's/^imx500-converter==//p' requirements-imx500.lock) $(DOCKER_BUILD_ARGS) \
	    -f Dockerfile.imx500 -t $(IMX500_IMAGE) -
	@$(DOCKER) image ls --format 'built {{.Repository}}:{{.Tag}} ({{.ID}}, {{.Size}})' $(IMX500_IMAGE)
