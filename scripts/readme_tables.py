#!/usr/bin/env python3
"""Regenerate the README's tables from their single sources in the code.

    python scripts/readme_tables.py          rewrite README.md in place
    python scripts/readme_tables.py --check  exit 1 if README.md is out of date

Each table sits between `<!-- generated: module.function() -->` and `<!-- end generated -->`.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- generated: (?P<source>[\w.]+)\(\) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def generate(source: str) -> str:
    module, function = source.rsplit(".", 1)
    return getattr(importlib.import_module(module), function)()


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + generate(m.group("source")) + "\n" + m.group(4), text)


def main() -> int:
    text = README.read_text()
    fresh = render(text)
    if "--check" in sys.argv:
        if fresh != text:
            print("README.md tables are out of date: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
