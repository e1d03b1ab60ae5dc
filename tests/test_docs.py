"""The documentation stays true: generated tables match the code, links lead somewhere, the
README stays short, and nothing cites documents that live outside the repository."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mctq_job import docs_tables, errors, events, results

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 250

FENCED_CODE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)

# Phrases that point the reader at a document outside the repository. The AITRIOS notebook
# may still be named as what the job replaces; its or anyone's "spec" may not.
CITATIONS = [
    re.compile(p, re.I)
    for p in (
        r"\bissues?\s*#?\d+",
        r"\b(?:ticket|bug|PR|pull\s+request)\s*#\d+",
        r"\bpull\s+request\s+\d+",
        r"\bthe\s+(?:notebook's\s+|original\s+|task's\s+|project's\s+)?spec(?:ification)?s?\b",
        r"\b(?:as\s+)?per\s+(?:the\s+)?spec\b",
        r"\b(?:the|this|our|my)\s+brief\b",
        r"\brequirement\s*#?\d+\b",
    )
]
CITATION_SCOPE = ["README.md", "docs", "mctq_job", "k8s", "examples"]
TEXT_SUFFIXES = {".md", ".py", ".sh", ".yml", ".yaml", ".json", ".txt", ".toml", ".cfg", ""}


def without_code(markdown: str) -> str:
    """``markdown`` with fenced blocks and code spans blanked, keeping every line in place."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731
    return CODE_SPAN.sub(blank, FENCED_CODE.sub(blank, markdown))


def relative_links(markdown: str) -> list[tuple[int, str]]:
    """(line number, target) of every link in ``markdown`` that is not an external URL."""
    prose = without_code(markdown)
    found = [(m.start(1), m.group(1)) for pattern in (INLINE_LINK, REFERENCE_LINK) for m in pattern.finditer(prose)]
    return sorted((prose.count("\n", 0, at) + 1, target) for at, target in found if not EXTERNAL.match(target))


def heading_anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer gives the headings of ``markdown`` (GitHub's rule)."""
    seen: dict[str, int] = {}
    anchors = set()
    for m in HEADING.finditer(FENCED_CODE.sub("", markdown)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "").lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_link(page: Path, target: str) -> str | None:
    """Why ``target`` (a link on ``page``) leads nowhere, or None when it resolves."""
    path_part, _, anchor = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page
    if not destination.exists():
        return f"no file {shown(destination)}"
    if anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination.read_text()):
        return f"no heading #{anchor} in {shown(destination)}"
    return None


def scoped_files(scope: str) -> list[Path]:
    """The text files of one part of the tree that the citation check reads."""
    base = ROOT / scope
    candidates = [base] if base.is_file() else sorted(base.rglob("*"))
    return [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]


def citations(path: Path) -> list[str]:
    """ "file:line: phrase" for every citation of an outside document in ``path``."""
    text = path.read_text(errors="replace")
    hits = {(text.count("\n", 0, m.start()) + 1, m.group(0)) for pattern in CITATIONS for m in pattern.finditer(text)}
    return [f"{shown(path)}:{line}: {' '.join(phrase.split())!r}" for line, phrase in sorted(hits)]


def test_generated_tables_are_current():
    """scripts/readme_tables.py --check: every generated block equals what the code generates."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_tables.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "table",
    [
        docs_tables.keys_table_markdown,
        events.event_table_markdown,
        errors.exit_code_table_markdown,
        results.results_table_markdown,
        results.manifest_table_markdown,
    ],
    ids=lambda f: f.__name__,
)
def test_each_generated_table_is_published(table):
    """Configuration keys, events, exit codes and the fields of results.json and manifest.json each
    appear in README.md or a docs/ page."""
    assert any(table() in page.read_text() for page in PAGES), f"{table.__name__}() is on no page"


def error_classes() -> list[type[errors.MctqError]]:
    """Every error class of mctq_job.errors the job can end a run with (the base is never raised)."""
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.MctqError) and cls is not errors.MctqError
    ]


#: A child that ends a run the one way the job does (lifecycle.Process.fail) with an instance of
#: the error class named by argv[1], or, for Interrupted, waits for the signal it is sent.
ENDING = """
import sys, time
from mctq_job import errors, lifecycle, logs

process = lifecycle.Process(logs.configure("json", "info", sys.stdout))
name = sys.argv[1]
if name == "Interrupted":
    process.handle_signals()
    print('{"event": "ready"}', flush=True)
    while True:
        time.sleep(1)
cls = getattr(errors, name)
special = {"ToolkitError": lambda: cls("MCT", RuntimeError("broke")), "InternalError": lambda: cls(KeyError("k"))}
process.fail(special.get(name, lambda: cls("a message"))())
"""


def ended(tmp_path: Path, name: str, signum: int | None = None) -> tuple[int, dict, str]:
    """(exit status, last event, termination message) of a process ending with error ``name``."""
    log = tmp_path / "termination-log"
    log.touch()
    env = {**os.environ, "MCTQ_TERMINATION_LOG": str(log)}
    proc = subprocess.Popen([sys.executable, "-c", ENDING, name], stdout=subprocess.PIPE, text=True, env=env)
    try:
        if signum is not None:
            assert json.loads(proc.stdout.readline())["event"] == "ready"
            proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.stdout.close()
    return proc.returncode, json.loads(out.splitlines()[-1]), log.read_text()


@pytest.mark.parametrize("name", [cls.__name__ for cls in error_classes() if cls is not errors.Interrupted])
def test_each_error_ends_the_process_as_its_row_of_the_exit_code_table_says(tmp_path, name):
    """The table is what users, CI scripts and the podFailurePolicy read: the exit status, the
    last event and the termination message of a run ended by each error must match one row."""
    code, last, message = ended(tmp_path, name)
    by_name = {e.name: e.code for e in errors.EXIT_CODES}
    assert last["event"] == "run.failed" and last["error"] in by_name, last
    assert code == last["exit_code"] == by_name[last["error"]], (code, last)
    assert message.startswith(f"{last['error']} (exit {code}): ")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interruption_ends_the_process_as_its_row_of_the_exit_code_table_says(tmp_path, signum):
    code, last, message = ended(tmp_path, "Interrupted", signum)
    (row,) = [e for e in errors.EXIT_CODES if e.code == code]
    assert code == 128 + signum and last["exit_code"] == code
    assert last["error"] == row.name and row.name.endswith(signal.Signals(signum).name.lower()), last
    assert message.startswith(f"{row.name} (exit {code}): ")


def test_every_event_has_a_meaning():
    assert set(events.EVENT_MEANINGS) == set(events.Event)


def test_readme_gives_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


@pytest.mark.parametrize("page", PAGES, ids=shown)
def test_relative_links_lead_to_existing_files_and_headings(page):
    problems = [
        f"{shown(page)}:{line}: ({target}) {why}"
        for line, target in relative_links(page.read_text())
        if (why := broken_link(page, target))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scope", CITATION_SCOPE)
def test_nothing_cites_documents_outside_the_repository(scope):
    hits = [hit for path in scoped_files(scope) for hit in citations(path)]
    assert not hits, "say what is meant instead of citing it:\n" + "\n".join(hits)


# --- the checkers themselves: each must catch what it exists to catch ------------------------


def test_link_checker_finds_links_outside_code_and_skips_urls():
    text = "[a](docs/x.md) `[b](no.md)`\n```\n[c](no.md)\n```\n[d](https://example.org) ![e](img.png)\n[f]: ref.md\n"
    assert relative_links(text) == [(1, "docs/x.md"), (5, "img.png"), (6, "ref.md")]


def test_link_checker_reports_missing_files_and_headings(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Exit codes\n## `max_top1_drop`, again\n")
    assert broken_link(page, "#exit-codes") is None and broken_link(page, "#max_top1_drop-again") is None
    assert "no heading #nowhere" in broken_link(page, "#nowhere")
    assert "no file" in broken_link(page, "missing.md")


@pytest.mark.parametrize(
    "phrase", ["see issue 3", "as the spec says", "the notebook's spec", "per spec", "PR #12", "the brief asks"]
)
def test_citation_patterns_catch(phrase):
    assert any(p.search(phrase) for p in CITATIONS), phrase


@pytest.mark.parametrize(
    "phrase",
    [
        "the pod spec",
        "tf.TensorSpec",
        "isoformat(timespec=...)",
        "the AITRIOS notebook",
        "requirements.lock",
        "spec.resize",
    ],
)
def test_citation_patterns_spare(phrase):
    assert not any(p.search(phrase) for p in CITATIONS), phrase
