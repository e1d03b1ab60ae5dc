"""The command line without TensorFlow: validate, schema, version, bad configs, exit codes.

``validate``, ``schema`` and ``version`` run in-process through click's CliRunner; ``run``
owns the process (signals, exit), so it runs in a subprocess."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from importlib import metadata

import click
import pytest
import structlog
from click.testing import CliRunner, Result
from conftest import ENTRYPOINT, read_config, run_cli, write_config

from mctq_job import config as config_mod
from mctq_job.cli import main
from mctq_job.errors import EXIT_CODES, ConfigError, InputDataError
from mctq_job.events import Event


@pytest.fixture(autouse=True)
def fresh_logging():
    """Each in-process command configures logging anew; no test sees another's."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def events_of(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_validate_accepts_a_good_project_and_summarises_it(tiny_project):
    """A good project: exit 0 and one config.valid event with the counts."""
    result = invoke("validate", "--config", str(tiny_project / "configuration.json"))
    assert result.exit_code == 0, result.output
    (valid,) = [e for e in events_of(result) if e["event"] == Event.CONFIG_VALID.value]
    assert valid["calibration_images"] == 4 and valid["evaluation_images"] == 4 and valid["classes"] == 2


def test_validate_never_imports_tensorflow_or_mct(tiny_project):
    """validate must answer fast: TensorFlow and MCT stay unimported."""
    code = (
        "import sys; from mctq_job.cli import main\n"
        "try:\n    main(['validate'], standalone_mode=False)\n"
        "finally:\n    heavy = [m for m in ('tensorflow', 'model_compression_toolkit') if m in sys.modules]\n"
        "    print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tiny_project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_bad_config_exits_with_its_code_names_the_key_and_writes_nothing(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "batch_size": "2"})
    for command in ("validate", "run"):
        result = run_cli(command, cwd=tiny_project)
        assert result.returncode == ConfigError.exit_code
        last = result.events[-1]
        assert last["event"] == Event.RUN_FAILED.value and last["exit_code"] == ConfigError.exit_code
        assert "key 'batch_size'" in last["message"] and "Accepted:" in last["message"]
    assert not (tiny_project / "out").exists() and not (tiny_project / "res").exists()


def test_run_is_the_default_command(tiny_project):
    cfg = read_config(tiny_project)
    write_config(tiny_project, {**cfg, "iteration_count": 0})
    result = run_cli("--config", str(tiny_project / "configuration.json"), cwd=tiny_project.parent)
    assert result.returncode == ConfigError.exit_code
    assert result.events[0]["event"] == Event.RUN_START.value and result.events[0]["command"] == "run"


def test_config_from_environment_variable(tiny_project):
    """MCTQ_CONFIG names the configuration when --config does not."""
    result = CliRunner().invoke(main, ["validate"], env={"MCTQ_CONFIG": str(tiny_project / "configuration.json")})
    assert result.exit_code == 0, result.output


def test_missing_config_file(tmp_path):
    """No configuration file: exit 3, and the message says how to name one."""
    result = invoke("validate", "--config", str(tmp_path / "configuration.json"))
    assert result.exit_code == ConfigError.exit_code
    assert "configuration file not found" in events_of(result)[-1]["message"]


def test_input_data_problem_exits_with_the_data_code(tiny_project):
    """A class folder without a label is bad input data: exit 4, naming the folder."""
    (tiny_project / "data" / "labels.json").write_text('{"cat": 0}')
    result = invoke("validate", "--config", str(tiny_project / "configuration.json"))
    assert result.exit_code == InputDataError.exit_code
    assert "class folder 'dog'" in events_of(result)[-1]["message"]


@pytest.mark.parametrize(
    "encoding,newline", [("utf-8", "\n"), ("utf-8-sig", "\r\n"), ("utf-8-sig", "\n"), ("utf-8", "\r\n")]
)
def test_files_saved_by_common_editors_are_accepted(tiny_project, encoding, newline):
    """configuration.json and the label file in UTF-8 with or without a byte-order mark, LF or CRLF."""
    for path in (tiny_project / "configuration.json", tiny_project / "data" / "labels.json"):
        text = json.dumps(json.loads(path.read_text()), indent=2)
        path.write_bytes(text.replace("\n", newline).encode(encoding))
    result = invoke("validate", "--config", str(tiny_project / "configuration.json"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "which,expected_code",
    [("configuration.json", ConfigError.exit_code), ("data/labels.json", InputDataError.exit_code)],
)
@pytest.mark.parametrize("encoding,named", [("utf-16", "UTF-16"), ("latin-1", "not UTF-8")])
def test_other_encodings_get_one_error_naming_the_file_and_utf8(tiny_project, which, expected_code, encoding, named):
    """UTF-16 (with its byte-order mark) or Latin-1 bytes: one error naming the file and UTF-8."""
    path = tiny_project / which
    document = json.loads(path.read_text())
    if which.endswith("labels.json"):
        document = {"cat": 0, "dog": 1, "caf\u00e9": 2}
    else:
        document["evaluate_image_extension"] = "jpg"
        document["comment\u00e9"] = None  # a non-ASCII byte, so Latin-1 is not valid UTF-8
    path.write_bytes(json.dumps(document, ensure_ascii=False).encode(encoding))
    result = invoke("validate", "--config", str(tiny_project / "configuration.json"))
    assert result.exit_code == expected_code
    message = events_of(result)[-1]["message"]
    assert str(path) in message and named in message and "expected UTF-8" in message


def test_termination_message_is_written_where_the_file_exists(tiny_project):
    (tiny_project / "data" / "labels.json").write_text("[]")
    log = tiny_project / "termination"
    log.touch()
    result = run_cli("run", cwd=tiny_project, env={"MCTQ_TERMINATION_LOG": str(log)})
    assert result.returncode == InputDataError.exit_code
    text = log.read_text()
    assert text.startswith("invalid_input (exit 4): ") and text.count("\n") == 1


def usage_error_code() -> int:
    """The exit-code table's ``usage_error`` row."""
    (row,) = [e for e in EXIT_CODES if e.name == "usage_error"]
    return row.code


def test_unknown_option_exits_as_the_tables_usage_error_row_says():
    """A bad option is click's usage error: the process's status, click's code and the table's row agree."""
    proc = subprocess.run([sys.executable, str(ENTRYPOINT), "run", "--no-such-option"], capture_output=True, text=True)
    assert "No such option" in proc.stderr
    assert proc.returncode == click.UsageError.exit_code == usage_error_code()


def test_schema_prints_the_configuration_schema():
    """schema prints the JSON Schema that validation uses."""
    result = invoke("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(config_mod.json_schema()))


def test_version_reports_the_installed_stack():
    """version names the pinned TensorFlow and MCT actually installed."""
    result = invoke("version")
    versions = json.loads(result.stdout)
    assert versions["tensorflow"] == metadata.version("tensorflow-cpu") == "2.15.1"
    assert versions["model_compression_toolkit"] == metadata.version("model-compression-toolkit") == "2.6.1"
    assert versions["python"].startswith("3.11.")


def test_console_format_is_for_people(tiny_project):
    """--log-format console: readable lines, not JSON."""
    result = invoke("validate", "--log-format", "console", "--config", str(tiny_project / "configuration.json"))
    assert result.exit_code == 0
    assert "config.valid" in result.stdout and not result.stdout.lstrip().startswith("{")


def test_index_placeholder_picks_the_configuration_of_this_completion_index(tiny_project):
    """Indexed Jobs: --config /config/config-{index}.json reads the file of JOB_COMPLETION_INDEX."""
    (tiny_project / "configuration.json").rename(tiny_project / "config-2.json")
    template = str(tiny_project / "config-{index}.json")
    result = run_cli("validate", "--config", template, cwd=tiny_project, env={"JOB_COMPLETION_INDEX": "2"})
    assert result.returncode == 0
    assert result.named("stage.start")[0]["stage"] == "config"
    missing = run_cli("validate", "--config", template, cwd=tiny_project, env={"JOB_COMPLETION_INDEX": "3"})
    assert missing.returncode == ConfigError.exit_code and "config-3.json" in missing.events[-1]["message"]
    unset = run_cli("validate", "--config", template, cwd=tiny_project, env={"JOB_COMPLETION_INDEX": ""})
    assert unset.returncode == ConfigError.exit_code
    assert "JOB_COMPLETION_INDEX" in unset.events[-1]["message"]


@pytest.mark.slow  # the run reaches the model stage: TensorFlow, in the child
def test_umask_from_the_environment_makes_created_folders_group_writable(tiny_project):
    """The image sets MCTQ_UMASK=002 so pods of different UIDs in one group share volumes.
    (The placeholder model fails to load, after the output folders were made.)"""
    result = run_cli("run", cwd=tiny_project, env={"MCTQ_UMASK": "002"})
    assert result.returncode == InputDataError.exit_code
    assert (tiny_project / "out").stat().st_mode & 0o777 == 0o775
    bad = run_cli("run", cwd=tiny_project, env={"MCTQ_UMASK": "rw"})
    assert bad.returncode == usage_error_code() and "MCTQ_UMASK" in bad.stderr
