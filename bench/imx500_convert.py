#!/usr/bin/env python3
"""How long Sony's IMX500 converter takes on a job's quantized model, and how much memory its
process tree (Python, a shell, several JVMs) holds at its peak.

The model is quantized by the job's own stages (inputs, calibration, quantize) from a project's
configuration.json (default: the digits demo, built if missing), exported with MCT's Keras
exporter, then converted with mctq_job.imx500.convert while /proc is sampled.

    python -m bench.imx500_convert [--config demo/configuration.json] [--tpc-version 1.0]

Needs the converter (MCTQ_IMXCONV, imxconv-tf on PATH, or .venv-imx500 from `make imx500-venv`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mctq_job import imx500
from mctq_job.config import TPC_VERSIONS

from . import common, workload

VENV_CONVERTER = common.ROOT / ".venv-imx500" / "bin" / imx500.EXECUTABLE
SAMPLE_EVERY_S = 0.2


def find_converter() -> imx500.Converter:
    """MCTQ_IMXCONV or PATH, else the repository's own .venv-imx500."""
    environ = dict(os.environ)
    if imx500.ENV not in environ and VENV_CONVERTER.exists():
        environ[imx500.ENV] = str(VENV_CONVERTER)
    return imx500.find_converter(environ)


def export_quantized(config_file: Path, tpc_version: str, destination: Path) -> None:
    """The job's quantized model for ``config_file`` (with ``tpc_version``), exported for the converter."""
    from mctq_job import model, quantize
    from mctq_job.export import keras_export_model

    checked = common.load_inputs(config_file)
    config = checked.config.model_copy(update={"target_platform": "imx500", "target_platform_version": tpc_version})
    batches = common.calibration_batches(checked)
    quantized = quantize.quantize(model.load(checked).model, lambda: iter([[b] for b in batches]), config)
    keras_export_model(quantized.model, destination)


def tree_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in the group, summed (pages from /proc/PID/statm)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                total += int((stat.parent / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE")


def convert_sampled(converter: imx500.Converter, keras_file: Path, work_dir: Path) -> tuple[imx500.Package, float, int]:
    """(package, wall seconds, peak summed RSS in bytes) of one conversion."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["package"] = imx500.convert(converter, keras_file, work_dir, lambda line: None)
        except imx500.ConverterError as exc:
            result["error"] = exc

    began = time.perf_counter()
    worker = threading.Thread(target=run)
    worker.start()
    peak = 0
    while worker.is_alive():
        for pgid in imx500.running_process_groups():
            peak = max(peak, tree_rss_bytes(pgid))
        worker.join(SAMPLE_EVERY_S)
    seconds = time.perf_counter() - began
    if "error" in result:
        raise result["error"]
    return result["package"], seconds, peak


def measure(config_file: Path | None = None, tpc_version: str = "1.0") -> dict[str, Any]:
    """Quantize, export and convert once; the seconds of each part, the converter's peak
    memory (whole process tree) and the package's memory facts."""
    config_file = config_file or workload.ensure_demo()
    converter = find_converter()
    with tempfile.TemporaryDirectory(prefix="imx500-bench-") as work:
        keras_file = Path(work) / "model_quantized.keras"
        began = time.perf_counter()
        export_quantized(config_file, tpc_version, keras_file)
        quantize_seconds = time.perf_counter() - began
        package, convert_seconds, peak = convert_sampled(converter, keras_file, Path(work))
    return {
        "model": str(config_file.parent.name),
        "tpc_version": tpc_version,
        "converter_version": converter.version,
        "quantize_and_export_seconds": round(quantize_seconds, 1),
        "convert_seconds": round(convert_seconds, 1),
        "convert_peak_rss_mb": common.mb(peak),
        "package": package.facts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="a project's configuration.json (default: demo)")
    parser.add_argument("--tpc-version", default="1.0", choices=TPC_VERSIONS["imx500"])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(measure(args.config, args.tpc_version), indent=2))


if __name__ == "__main__":
    main()
