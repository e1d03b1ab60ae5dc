#!/usr/bin/env python3
"""`make bench`: the spec's responsiveness targets and the job's cost, measured on the demo
project (built if missing). Prints a table and saves bench-results/bench.{json,md}.

Targets (from the functional spec): UI response <= 1.2 s (`validate`, `--help`, first log
line of `run`); an update at least every 5 s while the job works.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = [sys.executable, str(ROOT / "entrypoint.py")]
DEMO = Path(os.environ.get("DEMO", ROOT / "demo"))
OUT = ROOT / "bench-results"
REPEAT = 5


def ensure_demo() -> None:
    if not (DEMO / "configuration.json").exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py"), str(DEMO)], check=True)


def timed(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(ENTRY + args, cwd=DEMO, check=True, capture_output=True)
    return time.perf_counter() - began


def first_line_latency() -> float:
    """Seconds from process start to the first JSON line of `run`; the run is then stopped."""
    began = time.perf_counter()
    proc = subprocess.Popen(ENTRY, cwd=DEMO, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    latency = time.perf_counter() - began
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return latency


def full_run() -> dict:
    began = time.perf_counter()
    proc = subprocess.run(ENTRY + ["--config", str(DEMO / "configuration.json")], cwd=DEMO,
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - began
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    stamps = [dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in events]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    manifest = json.loads((DEMO / "output" / "manifest.json").read_text())
    return {"wall_s": round(wall, 2), "max_gap_between_lines_s": round(max(gaps), 2),
            "stage_seconds": manifest["stage_seconds"], "peak_memory_mb": round(manifest["peak_memory_bytes"] / 2**20)}


def median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def main() -> None:
    ensure_demo()
    figures = {
        "help_s": median([timed(["--help"]) for _ in range(REPEAT)]),
        "validate_s": median([timed(["validate"]) for _ in range(REPEAT)]),
        "first_log_line_s": median([first_line_latency() for _ in range(3)]),
        "run": full_run(),
    }
    report = {"measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count()}, "targets": {"ui_response_s": 1.2, "max_gap_s": 5.0},
              "figures": figures}
    rows = [
        ("`--help`", f"{figures['help_s']} s", "<= 1.2 s"),
        ("`validate` (demo: 1,438 + 359 images)", f"{figures['validate_s']} s", "<= 1.2 s"),
        ("first log line of `run`", f"{figures['first_log_line_s']} s", "<= 1.2 s"),
        ("longest gap between log lines", f"{figures['run']['max_gap_between_lines_s']} s", "< 5 s"),
        ("whole demo job, wall", f"{figures['run']['wall_s']} s", "-"),
        ("peak memory (RSS)", f"{figures['run']['peak_memory_mb']} MB", "-"),
    ] + [(f"stage `{k}`", f"{v} s", "-") for k, v in figures["run"]["stage_seconds"].items()]
    table = "| measure | value | target |\n| --- | --- | --- |\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "bench.md").write_text(table + "\n")
    print(table)
    print(f"\nsaved {OUT / 'bench.json'} and {OUT / 'bench.md'}")


if __name__ == "__main__":
    main()
