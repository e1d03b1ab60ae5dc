"""k8s/overlays/sweep/make_configs.py, run as its users run it: a sweep.json written to a
folder, the script started with --sweep and --out, its files, exit status and messages read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SWEEP = Path(__file__).resolve().parent.parent / "k8s" / "overlays" / "sweep"
BASE_CONFIG = SWEEP.parent.parent / "base" / "configuration.json"


def make_configs(tmp_path: Path, runs: list, *options: str, **sweep) -> subprocess.CompletedProcess:
    """Write sweep.json (the base configuration, output root /output/x, ``runs`` and any other
    ``sweep`` keys) to ``tmp_path`` and run the script on it, writing to ``tmp_path``/out."""
    definition = {"base_config": str(BASE_CONFIG), "output_root": "/output/x", "runs": runs, **sweep}
    (tmp_path / "sweep.json").write_text(json.dumps(definition))
    return subprocess.run(
        [
            sys.executable,
            str(SWEEP / "make_configs.py"),
            "--sweep",
            str(tmp_path / "sweep.json"),
            "--out",
            str(tmp_path / "out"),
            *options,
        ],
        capture_output=True,
        text=True,
    )


def job_patch(component: dict) -> dict[str, int]:
    """The Job fields the component sets: the last path segment -> value."""
    return {op["path"].rsplit("/", 1)[1]: op["value"] for op in yaml.safe_load(component["patches"][0]["patch"])}


def test_each_run_becomes_a_configuration_with_its_own_output_folders(tmp_path):
    """Run i is the base configuration with its `set` keys applied, written to config-i.json,
    with output folders <output_root>/<i>-<name>/model and .../evaluation; the component lists
    the files and sets completions, parallelism (at most completions) and maxFailedIndexes."""
    base = json.loads(BASE_CONFIG.read_text())
    runs = [{"name": f"seed-{seed}", "set": {"seed": seed}} for seed in (5, 6, 7)]
    proc = make_configs(tmp_path, runs, parallelism=10, max_failed_indexes=1)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    for index, run in enumerate(runs):
        config = json.loads((out / f"config-{index}.json").read_text())
        folder = f"/output/x/{index}-{run['name']}"
        assert config == {
            **base,
            **run["set"],
            "output_dir": f"{folder}/model",
            "evaluate_result_dir": f"{folder}/evaluation",
        }
    component = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert component["configMapGenerator"][0]["files"] == [f"config-{i}.json" for i in range(len(runs))]
    assert job_patch(component) == {"completions": len(runs), "parallelism": len(runs), "maxFailedIndexes": 1}


def test_a_shorter_sweep_removes_the_configurations_left_over(tmp_path):
    """Rewriting generated/ for fewer runs deletes the config files no index reads any more."""
    runs = [{"name": f"r{i}"} for i in range(3)]
    assert make_configs(tmp_path, runs).returncode == 0
    assert make_configs(tmp_path, runs[:1]).returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("config-*.json")) == ["config-0.json"]


def test_check_reports_whether_the_generated_files_are_current(tmp_path):
    """--check changes nothing; it exits 0 while the files match sweep.json and 1, naming the
    files, once sweep.json has changed."""
    runs = [{"name": "a"}, {"name": "b"}]
    make_configs(tmp_path, runs)
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert make_configs(tmp_path, runs, "--check").returncode == 0
    stale = make_configs(tmp_path, [{"name": "a", "set": {"seed": 1}}], "--check")
    assert stale.returncode == 1 and "config-0.json" in stale.stderr and "config-1.json" in stale.stderr
    assert {p.name: p.read_text() for p in (tmp_path / "out").iterdir()} == written


@pytest.mark.parametrize(
    "runs, sweep, message",
    [
        ([{"name": "a", "set": {"output_dir": "/output/same"}}], {}, "derived from its index and name"),
        ([{"name": "a"}, {"name": "a"}], {}, "run names repeat"),
        ([{"name": "Bad Name"}], {}, "run name 'Bad Name'"),
        ([{"name": "a", "set": {"target_platform": "gpu"}}], {}, "the configuration is not valid"),
        ([], {}, "no runs"),
        ([{"name": "a"}], {"output_root": "output"}, "absolute path"),
        ([{"name": "a"}], {"max_failed_indexes": 2}, "max_failed_indexes"),
    ],
    ids=["sets-output", "repeated-name", "bad-name", "invalid-config", "no-runs", "relative-root", "max-failed"],
)
def test_sweeps_that_could_collide_or_fail_are_refused(tmp_path, runs, sweep, message):
    """A sweep whose runs could share folders, or fail at once in the pod, exits 2 with a
    message saying what is wrong, and writes nothing."""
    proc = make_configs(tmp_path, runs, **sweep)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
