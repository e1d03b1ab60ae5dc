"""The README's tables are generated from the code's single sources; they must not drift."""

from __future__ import annotations

from pathlib import Path

from mctq_job import config, errors, events

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_exit_code_table_is_the_error_modules():
    assert errors.exit_code_table_markdown() in README


def test_readme_event_table_is_the_event_modules():
    assert events.event_table_markdown() in README


def test_readme_key_table_is_the_schemas():
    assert config.keys_table_markdown() in README


def test_exit_codes_match_the_error_classes():
    by_name = {e.name: e.code for e in errors.EXIT_CODES}
    for cls in (errors.ConfigError, errors.InputDataError, errors.StageError, errors.OutputError):
        assert by_name[cls.kind] == cls.exit_code
    assert len(by_name) == len(set(by_name.values()))


def test_every_event_has_a_meaning():
    assert set(events.EVENT_MEANINGS) == set(events.Event)


def test_readme_gives_the_two_setup_commands():
    assert "make demo" in README and "make test" in README
