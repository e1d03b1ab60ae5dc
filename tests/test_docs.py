"""The documentation stays true: generated tables match the code, links lead somewhere, the
README stays short, and nothing cites documents that live outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mctq_job import config, errors, events, results

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
        config.keys_table_markdown,
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


def error_classes_with_fixed_codes() -> list[type[errors.MctqError]]:
    """Every error class of mctq_job.errors that sets its own class-level exit code."""
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.MctqError) and "exit_code" in vars(cls)
    ]


def test_exit_codes_match_the_error_classes():
    by_name = {e.name: e.code for e in errors.EXIT_CODES}
    classes = error_classes_with_fixed_codes()
    assert len(classes) >= 6, classes  # the base, config, input, toolkit, output, lock, gate ...
    for cls in classes:
        assert by_name[cls.kind] == cls.exit_code, cls.__name__
    assert len(by_name) == len(set(by_name.values()))


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
