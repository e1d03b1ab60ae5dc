"""Artifacts appear under their final names only when complete, all at the end."""

from __future__ import annotations

import hashlib
import json

from mctq_job import artifacts


def test_staged_files_are_invisible_until_commit(tmp_path):
    staging = artifacts.Staging("run1")
    final = tmp_path / "model.tflite"
    temp = staging.write_bytes(final, b"abc")
    assert temp.parent == tmp_path and temp.name.startswith(".model.run1.tmp") and temp.suffix == ".tflite"
    assert not final.exists()
    assert staging.staged(final).sha256 == hashlib.sha256(b"abc").hexdigest()
    assert staging.commit() == [final]
    assert final.read_bytes() == b"abc" and not temp.exists()


def test_abort_removes_temporary_files_and_keeps_older_artifacts(tmp_path):
    final = tmp_path / "results.json"
    final.write_text("old")
    staging = artifacts.Staging("run2")
    staging.write_bytes(final, artifacts.json_bytes({"new": 1}))
    staging.write_bytes(tmp_path / "other.bin", b"x")
    removed = staging.abort()
    assert len(removed) == 2
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_second_abort_removes_what_a_late_writer_created(tmp_path):
    """A library still writing when the run was aborted (MCT's exporter) creates its file after
    the first abort; the clean-up's second pass removes it."""
    staging = artifacts.Staging("run4")
    temp = staging.write_bytes(tmp_path / "model_quantized.tflite", b"x")
    assert staging.abort() == [temp]
    temp.write_bytes(b"late")
    assert staging.abort() == [temp] and list(tmp_path.iterdir()) == []


def test_commit_replaces_older_artifacts_whole(tmp_path):
    final = tmp_path / "results.json"
    final.write_text("old")
    staging = artifacts.Staging("run3")
    staging.write_bytes(final, artifacts.json_bytes({"new": 1}))
    staging.commit()
    assert json.loads(final.read_text()) == {"new": 1}


def test_describe_matches_the_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    record = artifacts.describe(path).record()
    assert record["size"] == 3_000_000
    assert record["sha256"] == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_adopting_a_recovery_attempts_files_replaces_the_runs_own_whole(tmp_path):
    """The winner's staged files take the run's temporary names; a file only the run staged (a
    package the winner's model did not get) goes; the attempt's area ends empty."""
    run = artifacts.Staging("run5")
    run.write_bytes(tmp_path / "model_quantized.tflite", b"baseline")
    run.write_bytes(tmp_path / "packerOut.zip", b"baseline package")
    attempt = artifacts.Staging("run5-1")
    attempt.write_bytes(tmp_path / "model_quantized.tflite", b"winner")
    attempt.write_bytes(tmp_path / "recovered.json", b"{}")
    run.adopt(attempt)
    assert attempt.pending == {} and attempt.abort() == []
    assert run.staged(tmp_path / "model_quantized.tflite").sha256 == hashlib.sha256(b"winner").hexdigest()
    assert sorted(p.name for p in run.commit()) == ["model_quantized.tflite", "recovered.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_quantized.tflite", "recovered.json"]
    assert (tmp_path / "model_quantized.tflite").read_bytes() == b"winner"
