"""The event catalogue: every ``event`` name the job writes on stdout, and what it means.

Every line on stdout is one JSON object with ``timestamp`` (ISO-8601, UTC), ``level``,
``event`` (a name from :class:`Event`) and, inside a stage, ``stage``. How the lines are
rendered lives in :mod:`mctq_job.logs`.
"""

from __future__ import annotations

import enum


class Stage(enum.StrEnum):
    """The stages of a run, in the order they run: the ``stage`` of every event written inside
    one. ``imx500`` runs only where the configuration asks for the package, ``diagnose`` unless
    ``diagnosis.images`` is 0, ``recover`` where the accuracy gate fails and ``recover`` is set
    (its attempts run ``calibrate``, ``quantize``, ``export`` and ``imx500`` again, their events
    carrying ``attempt``)."""

    CONFIG = "config"
    INPUTS = "inputs"
    MODEL = "model"
    CALIBRATE = "calibrate"
    QUANTIZE = "quantize"
    EXPORT = "export"
    IMX500 = "imx500"
    EVALUATE = "evaluate"
    DIAGNOSE = "diagnose"
    RECOVER = "recover"
    REPORT = "report"


class Event(enum.StrEnum):
    RUN_START = "run.start"
    RUN_FINISH = "run.finish"
    RUN_FAILED = "run.failed"
    CONFIG_VALID = "config.valid"
    STAGE_START = "stage.start"
    STAGE_FINISH = "stage.finish"
    PROGRESS = "progress"
    HEARTBEAT = "heartbeat"
    ARTIFACT_WRITTEN = "artifact.written"
    ACCURACY_GATE = "accuracy.gate"
    INPUT_IGNORED = "input.ignored"
    INPUT_SKIPPED = "input.skipped"
    IMX500_REFUSAL_EXPECTED = "imx500.refusal_expected"
    LIBRARY_LOG = "library.log"
    STATISTICS = "quantize.statistics"
    QAT_EPOCH = "quantize.epoch"
    RECOVER_ATTEMPT = "recover.attempt"
    RECOVER_STOPPED = "recover.stopped"


EVENT_MEANINGS: dict[Event, str] = {
    Event.RUN_START: "First line, before TensorFlow is imported: version, config path, pid.",
    Event.RUN_FINISH: "Last line of a successful run: the four top-1 accuracies (detection: the four mAP@[.5:.95] and mAP@.5), "
    "artifacts, duration.",
    Event.RUN_FAILED: "Last line of a failed run: `error`, `exit_code`, `message` naming the culprit (and `problems`).",
    Event.CONFIG_VALID: "`validate` found nothing wrong: image, class and label counts.",
    Event.STAGE_START: f"A stage begins (`stage`: {', '.join(Stage)}), with what it is about to do.",
    Event.STAGE_FINISH: "A stage ended: `duration_s`, the process's `peak_memory_bytes` so far, and the stage's own summary.",
    Event.PROGRESS: "`current`/`total` `unit`, `percent`, `elapsed_s`, `eta_s` (calibration batches, QAT epochs, evaluated images).",
    Event.HEARTBEAT: "Written when nothing else was for 2 s (inside MCT or the converter): `stage_elapsed_s`.",
    Event.ARTIFACT_WRITTEN: "A file was published: `path`, `size`, `sha256`.",
    Event.ACCURACY_GATE: "With `max_top1_drop` set: `passed`, `top_1_drop` (Keras to model_quantized.tflite), `max_top1_drop`; "
    "with `max_map_drop` (detection): `passed`, `map_drop`, `max_map_drop`.",
    Event.INPUT_IGNORED: "A harmless file was skipped (e.g. a README beside the class folders).",
    Event.INPUT_SKIPPED: "An unreadable image was left out (`on_corrupt_image: skip`): `path`, `reason`.",
    Event.IMX500_REFUSAL_EXPECTED: "With `imx500.package`, the model stage found operators Sony's converter is known to "
    "refuse (`operators`: `layer`, `operator`, `instead`); the imx500 stage will likely fail with `unsupported_model`.",
    Event.LIBRARY_LOG: "A message from TensorFlow, absl, MCT, Python warnings or native code (`logger`, `message`).",
    Event.STATISTICS: "Which statistics collection MCT ran: `path` `fast` (the job's bit-identical, faster one, for "
    "the pinned MCT) or `mct` (unmodified MCT), and the `reason`.",
    Event.QAT_EPOCH: "With `quantization_method` `qat`, one pass over the training images ended: `epoch`, "
    "`epochs`, `loss` (the mean cross-entropy of its batches).",
    Event.RECOVER_ATTEMPT: "One recovery attempt ended: `attempt`, `description`, `change` (configuration keys), "
    "`outcome`, `subset_top_1`, `top_1`, `top_1_drop`, `seconds`.",
    Event.RECOVER_STOPPED: "Recovery ended: `stopped` (within_budget, max_attempts, max_seconds, "
    "candidates_exhausted), `winner` and `best` (attempt numbers or null), `seconds`.",
}


def event_table_markdown() -> str:
    """The event table of docs/running.md, generated here so it cannot drift."""
    rows = ["| event | meaning |", "| --- | --- |"]
    rows += [f"| `{event.value}` | {EVENT_MEANINGS[event]} |" for event in Event]
    return "\n".join(rows)
