"""docs/benchmarks.md's bench tables are generated, not pasted: every `<!-- bench: NAME -->`
block equals what ``python -m bench.docs_tables`` renders from the published docs/bench.json.

The tests never import bench/: they run its renderer as a command, as a person would, and read
the published JSON and page themselves. Fast: no TensorFlow, no measuring."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
DOCS_JSON = ROOT / "docs" / "bench.json"
TARGET_ROW = re.compile(
    r"^\| (?P<scope>[^|`]+): `(?P<name>\w+)` \| (?P<value>[\d.]+) \| <= (?P<limit>[\d.]+) \| (?P<verdict>[^|]*) \|$"
)


def docs_tables(*args: str | Path) -> subprocess.CompletedProcess:
    """``python -m bench.docs_tables ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "bench.docs_tables", *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(DOCS_JSON.read_text())


def block(text: str, name: str) -> str:
    match = re.search(rf"<!-- bench: {re.escape(name)} -->\n(.*?)<!-- end bench -->", text, re.S)
    assert match, f"no bench block {name!r}"
    return match.group(1)


def test_the_published_page_is_current():
    """Every block equals the table rendered from docs/bench.json, and no section lacks its block."""
    proc = docs_tables("--check")
    assert proc.returncode == 0, proc.stderr


def test_the_published_json_comes_from_a_full_run(report):
    assert not report["quick"] and "realsize" in report["comparisons"], "docs/bench.json must not be a QUICK=1 run"


def test_a_changed_figure_makes_the_page_stale(report, tmp_path):
    changed = json.loads(json.dumps(report))
    changed["comparisons"]["realsize"]["job"]["wall_s"] += 1
    (tmp_path / "bench.json").write_text(json.dumps(changed))
    proc = docs_tables("--check", "--json", tmp_path / "bench.json")
    assert proc.returncode == 1 and "realsize-job" in proc.stderr, proc.stderr


def test_a_section_without_its_block_is_reported(tmp_path):
    page = PAGE.read_text()
    without = re.sub(r"<!-- bench: memory -->\n.*?<!-- end bench -->\n", "", page, flags=re.S)
    assert without != page
    (tmp_path / "benchmarks.md").write_text(without)
    proc = docs_tables("--check", "--page", tmp_path / "benchmarks.md")
    assert proc.returncode == 1 and "memory" in proc.stderr, proc.stderr


def test_each_target_row_says_met_exactly_when_the_value_is_within_its_limit(report):
    """Read from the page: the verdict follows from the row's own figures and agrees with the JSON."""
    rows = [m for line in block(PAGE.read_text(), "targets").splitlines() if (m := TARGET_ROW.match(line))]
    digits = report["comparisons"]["digits_int8"]
    assert {m["name"] for m in rows if m["scope"] == "digits"} == {k for k in digits if k != "top_1"}
    assert len(rows) >= 5
    for row in rows:
        within = float(row["value"]) <= float(row["limit"])
        assert (row["verdict"].strip() == "met") == within and ("missed" in row["verdict"]) != within, row.group(0)
