#!/usr/bin/env python3
"""Regenerate the documentation's tables from their single sources in the code.

    python scripts/readme_tables.py          rewrite README.md and docs/**/*.md in place
    python scripts/readme_tables.py --check  exit 1 naming every page that is out of date

Each table sits between `<!-- generated: module.function() -->` and `<!-- end generated -->`;
the function returns the table's Markdown.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BLOCK = re.compile(r"(<!-- generated: (?P<source>[\w.]+)\(\) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def documentation_pages() -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def generated_sources(text: str) -> list[str]:
    """The `module.function` of every generated block in ``text``, in order."""
    return [m.group("source") for m in BLOCK.finditer(text)]


def generate(source: str) -> str:
    module, function = source.rsplit(".", 1)
    return getattr(importlib.import_module(module), function)()


def render(text: str) -> str:
    """``text`` with every generated block's body replaced by what its function returns now."""
    return BLOCK.sub(lambda m: m.group(1) + generate(m.group("source")) + "\n" + m.group(4), text)


def stale_pages(pages: list[Path]) -> list[Path]:
    """The pages whose generated blocks differ from what the code generates now."""
    return [page for page in pages if render(page.read_text()) != page.read_text()]


def main() -> int:
    pages = documentation_pages()
    if "--check" in sys.argv:
        stale = stale_pages(pages)
        for page in stale:
            print(
                f"{page.relative_to(ROOT)}: generated tables are out of date: run python scripts/readme_tables.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for page in pages:
        text = page.read_text()
        fresh = render(text)
        if fresh != text:
            page.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
