"""Problems found while checking the inputs, collected so that one error names them all, and
the wording helpers their messages share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, InputDataError, MctqError, OutputError, numbered

LISTED = 5  # names shown in one message before "and N more"


@dataclass
class Problems:
    """What is wrong, by the error it becomes: a configuration value (exit 3), the data it
    names (exit 4), or an output folder (exit 6); the first non-empty kind wins."""

    config: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def raise_any(self) -> None:
        problems = self.config + self.data + self.output
        if not problems:
            return
        kind: type[MctqError] = ConfigError if self.config else InputDataError if self.data else OutputError
        raise kind(numbered(problems), problems=problems)


def listed(items: list) -> str:
    """The first few items, and how many more there are."""
    shown = ", ".join(str(p) for p in items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def extension_counts(counts: dict[str, int]) -> str:
    return ", ".join(
        f"{n} x .{ext}" if ext != "(none)" else f"{n} without extension"
        for ext, n in sorted(counts.items(), key=lambda kv: -kv[1])[:LISTED]
    )


def missing(key: str, path: Path, what: str) -> str:
    return f"key '{key}': {path} does not exist; expected {what}"


def folder_problem(key: str, path: Path, what: str) -> str | None:
    if not path.exists():
        return missing(key, path, what)
    if not path.is_dir():
        return f"key '{key}': {path} is a file; expected {what}"
    return None
