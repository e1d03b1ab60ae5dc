"""The command line without TensorFlow: validate, schema, version, bad configs, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from conftest import ENTRYPOINT, read_config, run_cli, write_config
from mctq_job import config as config_mod
from mctq_job.errors import ConfigError, EXIT_CODES, InputDataError
from mctq_job.events import Event


def test_validate_accepts_a_good_project_and_summarises_it(tiny_project):
    result = run_cli("validate", cwd=tiny_project)
    assert result.returncode == 0, result.stdout + result.stderr
    (valid,) = result.named("config.valid")
    assert valid["calibration_images"] == 4 and valid["evaluation_images"] == 4 and valid["classes"] == 2
    assert result.stderr == ""


def test_validate_never_imports_tensorflow_or_mct(tiny_project):
    """validate must answer fast: TensorFlow and MCT stay unimported."""
    code = ("import sys; from mctq_job.cli import main\n"
            "try:\n    main(['validate'], standalone_mode=False)\n"
            "finally:\n    heavy = [m for m in ('tensorflow', 'model_compression_toolkit') if m in sys.modules]\n"
            "    print('HEAVY', heavy)\n")
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
    result = run_cli("validate", cwd=tiny_project.parent,
                     env={"MCTQ_CONFIG": str(tiny_project / "configuration.json")})
    assert result.returncode == 0


def test_missing_config_file(tmp_path):
    result = run_cli("validate", cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code
    assert "configuration file not found" in result.events[-1]["message"]


def test_input_data_problem_exits_with_the_data_code(tiny_project):
    (tiny_project / "data" / "labels.json").write_text('{"cat": 0}')
    result = run_cli("validate", cwd=tiny_project)
    assert result.returncode == InputDataError.exit_code
    assert "class folder 'dog'" in result.events[-1]["message"]


def test_termination_message_is_written_where_the_file_exists(tiny_project):
    (tiny_project / "data" / "labels.json").write_text("[]")
    log = tiny_project / "termination"
    log.touch()
    result = run_cli("run", cwd=tiny_project, env={"MCTQ_TERMINATION_LOG": str(log)})
    assert result.returncode == InputDataError.exit_code
    text = log.read_text()
    assert text.startswith("invalid_input (exit 4): ") and text.count("\n") == 1


def test_unknown_option_is_a_usage_error():
    proc = subprocess.run([sys.executable, str(ENTRYPOINT), "run", "--no-such-option"], capture_output=True, text=True)
    assert proc.returncode == 2 and "No such option" in proc.stderr
    assert 2 in {e.code for e in EXIT_CODES}


def test_schema_prints_the_configuration_schema():
    proc = subprocess.run([sys.executable, str(ENTRYPOINT), "schema"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == json.loads(json.dumps(config_mod.json_schema()))


def test_version_reports_the_installed_stack():
    proc = subprocess.run([sys.executable, str(ENTRYPOINT), "version"], capture_output=True, text=True)
    versions = json.loads(proc.stdout)
    assert versions["tensorflow"] == metadata.version("tensorflow-cpu") == "2.15.1"
    assert versions["model_compression_toolkit"] == metadata.version("model-compression-toolkit") == "2.6.1"
    assert versions["python"].startswith("3.11.")


def test_console_format_is_for_people(tiny_project):
    result = run_cli("validate", "--log-format", "console", cwd=tiny_project)
    assert result.returncode == 0
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


def test_umask_from_the_environment_makes_created_folders_group_writable(tiny_project):
    """The image sets MCTQ_UMASK=002 so pods of different UIDs in one group share volumes.
    (The placeholder model fails to load, after the output folders were made.)"""
    result = run_cli("run", cwd=tiny_project, env={"MCTQ_UMASK": "002"})
    assert result.returncode == InputDataError.exit_code
    assert (tiny_project / "out").stat().st_mode & 0o777 == 0o775
    bad = run_cli("run", cwd=tiny_project, env={"MCTQ_UMASK": "rw"})
    assert bad.returncode == 2 and "MCTQ_UMASK" in bad.stderr
