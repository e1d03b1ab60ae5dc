#!/usr/bin/env bash
# Makes Sony's IMX500 converter available for tests/test_imx500.py and local runs: Java 17
# (Debian's openjdk-17-jre-headless, as root, when no java is on PATH) and .venv-imx500 from
# requirements-imx500.lock (`make imx500-venv`, rebuilt only when the lock changed).
#
#   scripts/install-imx500.sh
#
# Idempotent: safe to run again at any time. Needs Python 3.11 (PYTHON, default python3.11) and
# the package index; about 1.9 GB on disk. The converter's licence allows its use but not its
# redistribution, which is why it is installed here on demand and never shipped (docs/imx500.md).
# Afterwards: export MCTQ_IMXCONV="$PWD/.venv-imx500/bin/imxconv-tf" (the tests find it anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "install-imx500: $*" >&2; }

make --no-print-directory -f mk/imx500.mk PYTHON="${PYTHON:-python3.11}" imx500-venv
version="$(.venv-imx500/bin/imxconv-tf --version)"
say "ready: $version at $PWD/.venv-imx500/bin/imxconv-tf ($(java -version 2>&1 | head -1))"
