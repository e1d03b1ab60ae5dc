# Two commands for a newcomer: `make demo` (the job on a bundled example) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: venv demo demo-recovery demo-detection test test-fast lint bench lock clean help docker-engine browser imx500-converter

help:
	@echo "make demo   build a small real example (digits) and run the job on it"
	@echo "make demo-detection   a small real object detector (examples/detection.py): mAP of the four models"
	@echo "make demo-recovery   a model MCT's defaults break, diagnosed and recovered (examples/hostile.py)"
	@echo "make test   run the test suite (real TensorFlow and MCT)"
	@echo "make bench  MobileNetV2 224x224 against the notebook's way and on real photographs, plus the digits benches (QUICK=1: digits only)"
	@echo "make lock   re-pin requirements*.lock from requirements*.in"
	@echo "make image / image-offline / docker-demo   the container image (see docs/container.md)"

venv: $(VENV)/.installed

# The venv is made from the lock files only; rebuilt when they change.
$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

demo: venv
	@test -f $(DEMO)/configuration.json || $(BIN)/python examples/digits.py $(DEMO)
	cd $(DEMO) && ../$(BIN)/mctq-job --log-format $${MCTQ_LOG_FORMAT:-console}
	@echo "artifacts: $(DEMO)/output/model.tflite, $(DEMO)/output/model_quantized.tflite, $(DEMO)/output/manifest.json, $(DEMO)/evaluate/results/results.json, $(DEMO)/evaluate/results/report.html (open it in a browser)"

# A small real detector (examples/detection.py: shapes, faces and digits on photographs, COCO
# ground truth; about 2 minutes to build the first time), quantized and scored by COCO mAP.
demo-detection: venv
	@test -f demo-detection/configuration.json || $(BIN)/python examples/detection.py demo-detection
	cd demo-detection && ../$(BIN)/mctq-job --log-format $${MCTQ_LOG_FORMAT:-console}
	@echo "artifacts: demo-detection/output/model.tflite, demo-detection/output/model_quantized.tflite (both cut before the post-processing), demo-detection/output/model_quantized.keras, demo-detection/output/manifest.json, demo-detection/evaluate/results/results.json (map_50_95_*, map_50_*), demo-detection/evaluate/results/report.html (open it in a browser)"

# A model MCT's defaults break (examples/hostile.py), run with `recover`: the diagnosis names
# the concatenation, recovery re-quantizes until the 5-point gate passes.
demo-recovery: venv
	@test -f demo-hostile/configuration.json || $(BIN)/python examples/hostile.py demo-hostile --recover
	cd demo-hostile && ../$(BIN)/mctq-job --log-format $${MCTQ_LOG_FORMAT:-console}
	@echo "see demo-hostile/evaluate/results/report.html, demo-hostile/output/recovered_configuration.json"

# The container and Kubernetes-rehearsal tests need a Docker engine, the report test Chromium:
# as root, both are installed (and the engine started) when missing (scripts/start-docker.sh,
# scripts/install-browser.sh); otherwise those tests skip and say why.
test: venv lint docker-engine browser imx500-converter
	$(BIN)/python -m pytest

# The guard rails: ruff (lint and format) over the whole repository (mctq_job, tests, bench, k8s,
# examples, scripts) and mypy, configured in pyproject.toml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docker-engine:
	@if [ "$$(id -u)" = 0 ]; then scripts/start-docker.sh; \
	 elif ! docker info >/dev/null 2>&1; then echo "make: no Docker engine: container tests will skip (sudo scripts/start-docker.sh starts one)"; fi

browser:
	@if [ "$$(id -u)" = 0 ]; then scripts/install-browser.sh; \
	 elif [ ! -x /usr/bin/chromium ]; then echo "make: no Chromium: the report.html browser test will skip (sudo scripts/install-browser.sh installs it)"; fi

# Sony's IMX500 converter for the package tests: as root, its venv is built (and Java 17
# installed) when missing; otherwise those tests skip and say why.
imx500-converter:
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory imx500-venv; \
	 elif [ ! -x .venv-imx500/bin/imxconv-tf ]; then echo "make: no IMX500 converter: the package tests will skip (make imx500-venv builds it)"; fi

# Without TensorFlow and MCT, here and in every process a test starts: MCTQ_TEST_FAST=1 makes
# both unimportable (tests/conftest.py), so a test that needs them fails until it is marked slow.
test-fast: venv
	@echo "make test-fast: the tests not marked slow or container, with TensorFlow and MCT unimportable (MCTQ_TEST_FAST=1)"
	MCTQ_TEST_FAST=1 $(BIN)/python -m pytest -m "not slow and not container"

# QUICK=1: the digits workloads only (skips MobileNetV2 224x224, about 10 minutes).
bench: venv
	$(BIN)/python -m bench.run $(if $(QUICK),--quick)

lock:
	PYTHON=$(PYTHON) scripts/lock.sh

clean:
	rm -rf $(VENV) $(DEMO) demo-detection .pytest_cache bench-results

# Container image targets (image, image-offline, docker-demo).
include mk/container.mk
# Sony's IMX500 converter: its venv and the mctq-job:imx500 image (imx500-venv, image-imx500).
include mk/imx500.mk
