"""The stage list itself, fast: the real pipeline (real config and inputs stages on a tiny
project) with small fake heavy stages in place of TensorFlow and MCT. What is checked is the
pipeline's own behaviour: the order, the values handed on, the events, staging and clean-up
when a stage fails, and a stage run more than once in a run."""

from __future__ import annotations

import io
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mctq_job import logs, pipeline
from mctq_job.context import RunContext
from mctq_job.errors import InternalError, ToolkitError, calling
from mctq_job.events import Event, Stage


@dataclass
class Recorder:
    """Fake heavy stages: each records its call and returns a small value naming itself."""

    calls: list[tuple[str, tuple]]
    fail_in: str | None = None

    def stage(self, name: str, value: Any = None) -> Any:
        def run(ctx: RunContext, *values: Any) -> Any:
            self.calls.append((name, values))
            if name == self.fail_in:
                raise KeyError(f"fake {name} failed")
            return value if value is not None else SimpleNamespace(name=name)

        return run

    def stages(self) -> pipeline.HeavyStages:
        def export(ctx: RunContext, inputs: Any, *values: Any) -> Any:
            self.calls.append(("export", values))
            ctx.write(inputs.config.output_dir / "model.tflite", b"staged")
            if self.fail_in == "export":
                raise KeyError("fake export failed")
            return SimpleNamespace(name="export")

        def report(ctx: RunContext, values: Any) -> Any:
            self.calls.append(("report", (values,)))
            ctx.write(values.config.evaluate_result_dir / "results.json", b"{}")
            published = ctx.require_staging().commit()
            results = SimpleNamespace(gate=None, imx500=None)
            return SimpleNamespace(results=results, manifest={}, published=published, summary=dict)

        return pipeline.HeavyStages(
            model=self.stage("model", SimpleNamespace(model="keras", info="info")),
            calibrate=self.stage("calibrate"),
            quantize=self.stage("quantize", SimpleNamespace(model="quantized")),
            export=export,
            imx500=self.stage("imx500", SimpleNamespace(facts={"fit_in_chip": True})),
            evaluate=self.stage("evaluate"),
            diagnose=self.stage("diagnose"),
            report=report,
        )


def context(tmp_path: Path) -> tuple[RunContext, io.StringIO]:
    stream = io.StringIO()
    return RunContext(logs.configure("json", "info", stream), tmp_path / "temp"), stream


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def run(tiny_project: Path, tmp_path: Path, recorder: Recorder) -> tuple[Any, RunContext, list[dict]]:
    ctx, stream = context(tmp_path)
    (tmp_path / "temp").mkdir()
    try:
        result = pipeline.run(ctx, tiny_project / "configuration.json", stages=recorder.stages)
    finally:
        found = events(stream)
    return result, ctx, found


def test_stages_run_in_order_each_handed_the_values_it_needs(tiny_project, tmp_path):
    recorder = Recorder([])
    result, ctx, found = run(tiny_project, tmp_path, recorder)
    order = [Stage.CONFIG, Stage.INPUTS, Stage.MODEL, Stage.CALIBRATE, Stage.QUANTIZE, Stage.EXPORT]
    order += [Stage.EVALUATE, Stage.DIAGNOSE, Stage.REPORT]  # no imx500: the configuration asks for no package
    assert [e["stage"] for e in found if e["event"] == Event.STAGE_START] == order
    assert [e["stage"] for e in found if e["event"] == Event.STAGE_FINISH] == order
    assert list(ctx.seconds) == order
    calls = dict(recorder.calls)
    inputs, loaded, drawn = calls["quantize"]
    assert loaded.model == "keras" and drawn.name == "calibrate" and len(inputs.truth.samples) == 4
    assert calls["export"] == (loaded, drawn, SimpleNamespace(model="quantized"))
    quantized = SimpleNamespace(model="quantized")
    assert calls["evaluate"] == (inputs, loaded, quantized, SimpleNamespace(name="export"))
    values = calls["report"][0]
    assert values.inputs is inputs and values.quantized == quantized and values.imx500 is None
    exported = SimpleNamespace(name="export")
    assert calls["diagnose"] == (inputs, loaded, quantized, exported, drawn)
    assert values.diagnosis == SimpleNamespace(name="diagnose")
    assert sorted(p.name for p in result.published) == ["model.tflite", "results.json"]
    assert len(ctx.cleanups) == 0  # the staging area unregistered itself once committed


def test_a_failing_stage_stops_the_run_and_leaves_no_staged_file(tiny_project, tmp_path):
    """A bug in the evaluate stage: exit 1 naming the stage; what export staged is removed,
    later stages never run, and nothing is left registered for the process to clean up."""
    recorder = Recorder([], fail_in="evaluate")
    with pytest.raises(InternalError) as failure:
        run(tiny_project, tmp_path, recorder)
    assert failure.value.context["stage"] == "evaluate" and "KeyError" in failure.value.message
    assert [name for name, _ in recorder.calls][-1] == "evaluate"
    assert list((tiny_project / "out").iterdir()) == []
    assert not (tiny_project / "res").exists() or list((tiny_project / "res").iterdir()) == []


def test_a_toolkit_failure_keeps_its_class_and_gets_the_stage(tiny_project, tmp_path):
    def quantize(ctx: RunContext, *values: Any) -> Any:
        with calling("MCT"):
            raise RuntimeError("MCT could not do it")

    recorder = Recorder([])
    stages = recorder.stages()
    with pytest.raises(ToolkitError) as failure:
        ctx, _ = context(tmp_path)
        (tmp_path / "temp").mkdir()
        pipeline.run(
            ctx,
            tiny_project / "configuration.json",
            stages=lambda: pipeline.HeavyStages(**{**vars(stages), "quantize": quantize}),
        )
    assert failure.value.context == {"tool": "MCT", "stage": "quantize"}


def test_a_stage_can_run_twice_in_a_run(tmp_path):
    """Recovery re-quantizes: each run of a stage has its own start and finish events, and the
    stage's seconds are those of its last run."""
    ctx, stream = context(tmp_path)
    values = [ctx.stage(Stage.QUANTIZE, attempt=n).run(lambda ctx, n: {"attempt": n}, n) for n in (1, 2)]
    assert values == [{"attempt": 1}, {"attempt": 2}]
    starts = [e for e in events(stream) if e["event"] == Event.STAGE_START]
    assert [(e["stage"], e["attempt"]) for e in starts] == [("quantize", 1), ("quantize", 2)]
    assert len([e for e in events(stream) if e["event"] == Event.STAGE_FINISH]) == 2
    assert list(ctx.seconds) == ["quantize"]


def test_validate_runs_the_first_two_stages_only(tiny_project, tmp_path):
    ctx, stream = context(tmp_path)
    checked = pipeline.validate(ctx, tiny_project / "configuration.json")
    assert checked.truth.labels == {"cat": 0, "dog": 1}
    assert [e["stage"] for e in events(stream) if e["event"] == Event.STAGE_FINISH] == ["config", "inputs"]


def test_the_stage_list_imports_neither_tensorflow_nor_mct(tiny_project, tmp_path):
    """Validating and running the stage list with fakes loads no heavy library: only the real
    stages, when they start, import them."""
    code = (
        "import sys; from pathlib import Path; from mctq_job import pipeline, logs\n"
        "from mctq_job.context import RunContext\n"
        f"pipeline.validate(RunContext(logs.configure(), Path({tempfile.gettempdir()!r})), "
        f"Path({str(tiny_project / 'configuration.json')!r}))\n"
        "pipeline.heavy_stages()\n"
        "print(sorted(m for m in ('tensorflow', 'model_compression_toolkit', 'numpy') if m in sys.modules))\n"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"
