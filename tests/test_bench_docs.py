"""docs/benchmarks.md's bench tables are generated, not pasted: every `<!-- bench: NAME -->`
block equals what bench/docs_tables.py renders from the published docs/bench.json. Fast: no
TensorFlow, no measuring."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import docs_tables  # noqa: E402


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(docs_tables.DOCS_JSON.read_text())


def blocks(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in docs_tables.BLOCK.finditer(text)}


def test_every_block_equals_the_table_rendered_from_bench_json(report):
    page = docs_tables.PAGE.read_text()
    rendered = docs_tables.tables(report)
    stale = [name for name, body in blocks(page).items() if body != rendered[name][1] + "\n"]
    assert not stale, f"run bench/docs_tables.py: stale blocks {stale}"


def test_every_section_of_a_full_report_is_on_the_page(report):
    assert "realsize" in report["comparisons"], "docs/bench.json must come from a full run, not QUICK=1"
    assert set(blocks(docs_tables.PAGE.read_text())) == set(docs_tables.SECTIONS)


def test_a_changed_figure_makes_the_page_stale(report):
    page = docs_tables.PAGE.read_text()
    changed = json.loads(json.dumps(report))
    changed["comparisons"]["realsize"]["job"]["wall_s"] += 1
    assert docs_tables.render_page(page, changed) != page
    assert docs_tables.render_page(page, report) == page


def test_targets_table_says_met_or_missed_for_each_target(report):
    table = docs_tables.targets_table(report)
    for scope, targets in docs_tables.all_targets(report).items():
        for name, target in targets.items():
            row = next(line for line in table.splitlines() if f"| {scope}: `{name}` |" in line)
            assert ("missed" in row) != target["met"]
