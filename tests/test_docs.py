"""The README's tables are generated from the code's single sources; they must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mctq_job import config, errors, events

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_tables_are_generated_from_the_code():
    """Exit codes (errors), events (events) and configuration keys (config schema)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for table in (errors.exit_code_table_markdown(), events.event_table_markdown(), config.keys_table_markdown()):
        assert table in README


def test_exit_codes_match_the_error_classes():
    by_name = {e.name: e.code for e in errors.EXIT_CODES}
    for cls in (errors.ConfigError, errors.InputDataError, errors.StageError, errors.OutputError,
                errors.OutputLockedError):
        assert by_name[cls.kind] == cls.exit_code
    assert len(by_name) == len(set(by_name.values()))


def test_every_event_has_a_meaning():
    assert set(events.EVENT_MEANINGS) == set(events.Event)


def test_readme_gives_the_two_setup_commands():
    assert "make demo" in README and "make test" in README
