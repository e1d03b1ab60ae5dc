"""report.html: results.json as one self-contained page for a person to read.

``render(results)`` is a pure function from the results (:class:`mctq_job.results.Results`,
the model results.json is written from) to an HTML document: inline CSS,
no JavaScript and no external reference; the plots are PNGs drawn with matplotlib's object API
(never pyplot's global state) and embedded as ``data:`` URIs. Every string that comes from the
job's inputs (class names, paths, settings) is escaped. Sections whose data is absent (no gate,
no resource utilization, no skipped images, ...) are left out. matplotlib is imported only when
a plot is drawn. The model names and the gate's pair of models are results.json's own
(``mctq_job.results``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# The per-class plot and the confusion matrices compare the pair the accuracy gate compares.
from .results import GATE_CANDIDATE as CANDIDATE
from .results import GATE_REFERENCE as REFERENCE
from .results import MODELS, ModelResult, PerClass, Results

TITLE = "mctq-job report"
#: The plots' section headings, in page order.
PLOT_HEADINGS = (
    "Accuracy per model",
    "Per-class change",
    "Confusion matrices",
    "Model sizes",
    "Where quantization departs from the float model",
)
#: Above this many classes the per-class plot shows only the worst and best PER_CLASS_SHOWN.
PER_CLASS_LIMIT, PER_CLASS_SHOWN = 40, 20
#: Confusion matrices name their classes on the axes up to this many classes.
CONFUSION_LABEL_LIMIT = 30
DPI = 100
MISSING = "n/a"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1rem 1.5rem;color:#1d1d1f;background:#fff;line-height:1.45}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.92rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
.note{color:#555;font-size:.9rem}.wrap{overflow-x:auto}
.gate{display:inline-block;padding:.3rem .8rem;border-radius:.3rem;font-weight:600;color:#fff}
.gate.passed{background:#1e7d32}.gate.failed{background:#c62828}
.verdict{font-size:1.05rem;border-left:4px solid #c62828;padding:.4rem .8rem;background:#fbeeee}
.verdict.recovered{border-left-color:#2e7d32;background:#edf7ee}
code{font-size:.88rem;word-break:break-all}
"""


def render(results: Results) -> str:
    """The whole report.html for one results.json document."""
    if results.task == "detection":
        return _page(_detection_sections(results))
    sections = (
        _verdict(results),
        _summary(results),
        _gate(results),
        _settings(results),
        _accuracy_section(results),
        _diagnosis_section(results),
        _recovery_section(results),
        _per_class_section(results),
        _confusion_section(results),
        _sizes_section(results),
        _census(results),
        _imx500(results),
        _agreement(results),
        _latency(results),
        _resources(results),
        _skipped(results),
    )
    return _page(sections)


def _page(sections: Sequence[str]) -> str:
    body = "\n".join(section for section in sections if section)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(TITLE)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_e(TITLE)}</h1>\n{body}\n</body>\n</html>\n"
    )


# --- HTML helpers -------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A value as plain text: numbers readable, nested data as compact JSON, null as n/a."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"  # byte and bit-operation counts, which MCT gives as floats
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _pct(value: Any) -> str:
    return MISSING if value is None else f"{100 * value:.2f} %"


def _cell(value: Any, text: str | None = None) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    opening = '<td class="num">' if numeric else "<td>"
    return f"{opening}{_e(_fmt(value) if text is None else text)}</td>"


def _map(value: float | None) -> str:
    """An mAP figure in a sentence."""
    return MISSING if value is None else f"{value:.3f}"


def _share(value: Any) -> str:
    """A cell for an accuracy or another share, as a percentage."""
    return _cell(value, _pct(value))


def _head(text: str) -> str:
    """A row's heading cell."""
    return f"<th>{_e(text)}</th>"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table from a header and rows of ready ``<td>`` cells."""
    head = "".join(_head(name) for name in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _key_values(mapping: dict[str, Any], heading: str = "setting") -> str:
    return _table((heading, "value"), ([_head(key), _cell(value)] for key, value in mapping.items()))


def _section(heading: str, *parts: str) -> str:
    return f"<section>\n<h2>{_e(heading)}</h2>\n" + "\n".join(part for part in parts if part) + "\n</section>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


# --- Tables -------------------------------------------------------------------------------


def _summary(results: Results) -> str:
    rows = [[_head(key), _share(value)] for key, value in results.notebook_accuracies().items()]
    rows += [[_head("image_count"), _cell(results.image_count)], [_head("class_count"), _cell(results.class_count)]]
    return _section("Summary", _table(("result", "value"), rows), _models_table(results))


def _models_table(results: Results) -> str:
    if not results.models:
        return ""
    rows = (
        [
            _head(name),
            _cell(model.description),
            _share(model.top_1_accuracy),
            _share(model.top_5_accuracy),
            _cell(model.correct),
            f"<td><code>{_e(_fmt(model.file))}</code></td>",
            _cell(model.bytes),
        ]
        for name, model in results.models.items()
    )
    return _table(("model", "description", "top-1", "top-5", "correct", "file", "bytes"), rows)


def _gate(results: Results) -> str:
    gate = results.gate
    if gate is None:
        return ""
    verdict = "passed" if gate.passed else "failed"
    text = (
        f"top-1 drop from {gate.reference} to {gate.candidate}: "
        f"{_points(gate.top_1_drop)} (at most {_points(gate.max_top1_drop)} allowed)"
    )
    return _section("Accuracy gate", f'<p><span class="gate {verdict}">gate {verdict}</span></p>', _note(text))


def verdict_sentence(results: Results) -> str | None:
    """The report's opening sentence where top-1 dropped: the drop with its 95 % interval, and
    the culprits the diagnosis names; None without a drop."""
    verdict = results.verdict
    if verdict is None or verdict.top_1_drop <= 0:
        return None
    models = f"from the Keras model to {MODELS[verdict.candidate].split(' ')[0]}"
    counts = (
        f"{verdict.reference_only_correct} of {verdict.images} images lost, {verdict.candidate_only_correct} gained"
    )
    interval = f"95 % interval {100 * verdict.low:+.1f} to {100 * verdict.high:+.1f} points"
    if verdict.measurable:
        text = f"Quantization cost {100 * verdict.top_1_drop:.1f} points of top-1 {models} ({interval}; {counts})"
    else:
        text = (
            f"Top-1 fell by {100 * verdict.top_1_drop:.1f} points {models} ({counts}), which chance explains: "
            f"the {interval} includes no drop"
        )
    if verdict.culprits:
        named = ", ".join(f"'{c.layer}' ({c.reason.replace('_', ' ')})" for c in verdict.culprits)
        text += f"; the diagnosis points at {'layer' if len(verdict.culprits) == 1 else 'layers'} {named}"
    return text + "."


def recovery_sentence(results: Results) -> str | None:
    """The report's opening sentence where recovery ran: what the configuration as given cost,
    where the diagnosis points, and which attempt (if any) brought the drop within the gate."""
    recovery = results.recovery
    if recovery is None:
        return None
    attempts = {a.attempt: a for a in recovery.attempts}
    won = attempts.get(recovery.winner) if recovery.winner is not None else None
    best = attempts.get(recovery.best) if recovery.best is not None else None
    if recovery.metric == "map_50_95":
        reference, baseline = recovery.reference_map_50_95 or 0.0, recovery.baseline_map_50_95 or 0.0
        drop = (reference - baseline) / reference if reference > 0 else 0.0
        given = (
            f"model_quantized.tflite scored mAP@[.5:.95] {baseline:.3f} against the Keras model's {reference:.3f}: "
            f"a drop of {drop:.1%}, over the gate's {recovery.max_map_drop or 0.0:.1%}"
        )
        brought = f"{won.map_50_95 or 0.0:.3f} (a drop of {won.map_drop or 0.0:.1%})" if won else ""
        closest = ""
        if best is not None:
            score = best.map_50_95 if best.map_50_95 is not None else best.subset_map_50_95
            where = "" if best.map_50_95 is not None else f" on {recovery.subset_images} images"
            closest = f"{_map(score)}{where}"
        # the configuration's own files are published; mAP has no per-image pairs for an interval
        as_given = f"{_given(results, given)} (no confidence interval: mAP has no per-image pairs)."
    else:
        assert recovery.reference_top_1 is not None and recovery.baseline_top_1 is not None
        assert recovery.max_top1_drop is not None  # classification's recovery carries its top-1 fields
        drop = recovery.reference_top_1 - recovery.baseline_top_1
        given = (
            f"model_quantized.tflite scored {_pct(recovery.baseline_top_1)} against the Keras model's "
            f"{_pct(recovery.reference_top_1)}: a drop of {100 * drop:.1f} points, over the gate's "
            f"{100 * recovery.max_top1_drop:.1f}"
        )
        brought = f"{_pct(won.top_1)} (a drop of {_points(won.top_1_drop)})" if won else ""
        closest = _pct(best.top_1) if best else ""
        # the configuration's own files are published: the verdict (with its interval) describes them
        as_given = verdict_sentence(results) or f"{_given(results, given)}."
    if won is not None:
        return (
            f"{_given(results, given)}. Recovery attempt {won.attempt}, {won.description}, brought it to {brought} "
            f"after {recovery.seconds:.0f} s of recovery: its files are published and its settings are in "
            "recovered_configuration.json."
        )
    tried = len(recovery.attempts)
    nearest = f"; the closest, attempt {best.attempt} ({best.description}), scored {closest}" if best else ""
    return (
        f"{as_given} Recovery tried {tried} {'fix' if tried == 1 else 'fixes'} in {recovery.seconds:.0f} s "
        f"(stopped: {recovery.stopped.replace('_', ' ')}), none within the gate{nearest}: the configuration's own "
        "files are published."
    )


def _given(results: Results, cost: str) -> str:
    """What the configuration as given cost, and where the diagnosis' findings point."""
    text = f"With the configuration as given, {cost}"
    findings = results.diagnosis.findings if results.diagnosis else []
    if findings:
        named = ", ".join(dict.fromkeys(f"'{f.layer}' ({f.kind.replace('_', ' ')})" for f in findings))
        text += f"; the diagnosis points at {named}"
    return text


def _verdict(results: Results) -> str:
    recovered = recovery_sentence(results)
    if recovered is not None:
        won = results.recovery is not None and results.recovery.winner is not None
        return f'<p class="verdict{" recovered" if won else ""}">{_e(recovered)}</p>'
    sentence = verdict_sentence(results)
    return f'<p class="verdict">{_e(sentence)}</p>' if sentence else ""


def _points(value: Any) -> str:
    return MISSING if value is None else f"{100 * value:.2f} percentage points"


def _settings(results: Results) -> str:
    document = results.document()
    run = {key: document[key] for key in ("task", "seed", "calibration")}
    return _section("Settings", _key_values(document["quantization"], "quantization"), _key_values(run, "run"))


def _agreement(results: Results) -> str:
    if results.agreement is None:
        return ""
    rows = (
        [_head(pair.replace("_vs_", " vs ")), _share(share)] for pair, share in results.agreement.document().items()
    )
    return _section(
        "Agreement",
        _note("Share of images on which two models predict the same class, right or wrong."),
        _table(("models", "same prediction"), rows),
    )


def _latency(results: Results) -> str:
    if not results.models:
        return ""
    rows = []
    for name, model in results.models.items():
        inference, latency = model.inference, model.latency
        rows.append(
            [
                _head(name),
                _cell(inference.ms_per_image),
                _cell(inference.batch_size),
                *map(_cell, (latency.batch_size, latency.threads, latency.runs, latency.median_ms, latency.p90_ms)),
            ]
        )
    header = (
        "model",
        "evaluation ms/image",
        "evaluation batch",
        "latency batch",
        "threads",
        "runs",
        "median ms",
        "p90 ms",
    )
    return _section("Latency", _table(header, rows))


def _resources(results: Results) -> str:
    utilization = results.resource_utilization
    records = {"float_8bit": utilization.float_8bit, "final": utilization.final}
    columns = {name: record.document() for name, record in records.items() if record is not None}
    metrics = list(dict.fromkeys(key for values in columns.values() for key in values))
    rows = ([_head(metric), *(_cell(values.get(metric)) for values in columns.values())] for metric in metrics)
    return _section("MCT resource utilization", _table(("metric", *columns), rows))


def _census(results: Results) -> str:
    """Per TFLite model: which operators run on which input type, and whether it is integer only."""
    censuses = {name: model.census for name, model in results.models.items() if model.census is not None}
    if not censuses:
        return ""
    summary = (
        [
            _head(name),
            _cell("yes" if census.integer_only else "no"),
            _cell(census.runtime_weight_reshapes),
            _cell(results.models[name].bytes),
        ]
        for name, census in censuses.items()
    )
    operators = sorted({op for census in censuses.values() for op in census.operators})
    counts = ([_head(op), *(_cell(census.operators.get(op, 0)) for census in censuses.values())] for op in operators)
    io = results.quantized_io
    io_rows = (
        [_head(side), _cell(facts.dtype), _cell(facts.scale), _cell(facts.zero_point)]
        for side, facts in (("input", io.input), ("output", io.output))
    )
    return _section(
        "TFLite operator census",
        _note(
            "Integer only: no operator between the input and the output computes in float (a QUANTIZE "
            "after a float input and a DEQUANTIZE before a float output are the only exceptions). "
            "Counts are by operator and the type of its first input."
        ),
        _table(("model", "integer only", "run-time weight reshapes", "bytes"), summary),
        _table(("operator/input type", *censuses), counts),
        _table(("model_quantized.tflite", "type", "scale", "zero point"), io_rows),
    )


def _imx500(results: Results) -> str:
    facts = results.imx500
    if facts is None:
        return ""
    fits = facts.fit_in_chip
    verdict = (
        f'<p><span class="gate {"passed" if fits else "failed"}">{"fits" if fits else "does not fit"} '
        f"the IMX500</span></p>"
    )
    return _section("IMX500 package", verdict, _key_values(facts.document(), "fact"))


def _skipped(results: Results) -> str:
    skipped = results.skipped_images
    if not skipped:
        return ""
    rows = ([f"<td><code>{_e(item.path)}</code></td>", _cell(item.reason)] for item in skipped)
    return _section(f"Skipped images ({len(skipped)})", _table(("path", "reason"), rows))


# --- Plots --------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    """The figure as PNG bytes that depend on the figure alone (no version or time stamp)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _accuracy_section(results: Results) -> str:
    models = results.models
    if not models:
        return ""
    figure = _figure(8 + 1.2 * max(0, len(models) - 4), 4.2)  # the extra exports get room of their own
    ax = figure.add_subplot()
    width = 0.38
    for offset, key, label, color in (
        (-width / 2, "top_1_accuracy", "top-1", "#3b6fb6"),
        (width / 2, "top_5_accuracy", "top-5", "#9cc3e6"),
    ):
        values = [getattr(model, key) for model in models.values()]
        bars = ax.bar(
            [i + offset for i in range(len(models))], [v or 0 for v in values], width, label=label, color=color
        )
        ax.bar_label(bars, labels=[MISSING if v is None else f"{v:.3f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(models)), labels=list(models), parse_math=False)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy")
    ax.set_title("Top-1 and top-5 accuracy per model")
    ax.legend(loc="lower right")
    return _section(PLOT_HEADINGS[0], _img(_png(figure), "Top-1 and top-5 accuracy per model"))


def _per_class(model: ModelResult | None) -> dict[str, PerClass]:
    return model.per_class if model is not None and model.per_class is not None else {}


def _class_changes(results: Results) -> list[tuple[float, str, PerClass, PerClass]]:
    """(change, class, reference row, candidate row) for each class both models were scored on,
    largest drop first."""
    reference = _per_class(results.models.get(REFERENCE))
    candidate = _per_class(results.models.get(CANDIDATE))
    rows = [
        (candidate[name].top_1_accuracy - reference[name].top_1_accuracy, name, reference[name], candidate[name])
        for name in reference
        if name in candidate
    ]
    return sorted(rows, key=lambda row: (row[0], row[1]))


def _per_class_section(results: Results) -> str:
    rows = _class_changes(results)
    if not rows:
        return ""
    note, split = "", None
    if len(rows) > PER_CLASS_LIMIT:
        split = PER_CLASS_SHOWN - 0.5
        note = (
            f"{len(rows)} classes: only the {PER_CLASS_SHOWN} with the largest drop and the "
            f"{PER_CLASS_SHOWN} with the largest gain are shown."
        )
        rows = rows[:PER_CLASS_SHOWN] + rows[-PER_CLASS_SHOWN:]
    title = f"Top-1 accuracy per class: {CANDIDATE} minus {REFERENCE}"
    return _section(
        PLOT_HEADINGS[1],
        _note(note) if note else "",
        _img(_per_class_png(rows, title, split), title),
        _per_class_table(rows),
    )


def _per_class_table(rows: list[tuple[float, str, PerClass, PerClass]]) -> str:
    return _table(
        ("class", "images", REFERENCE, CANDIDATE, "change"),
        (
            [
                _head(name),
                _cell(ref.images),
                _share(ref.top_1_accuracy),
                _share(cand.top_1_accuracy),
                _cell(change, f"{100 * change:+.2f} pp"),
            ]
            for change, name, ref, cand in rows
        ),
    )


def _per_class_png(rows: list[tuple[float, str, PerClass, PerClass]], title: str, split: float | None) -> bytes:
    """Horizontal bars, largest drop on top; a dashed line at ``split`` where classes were left out."""
    figure = _figure(8, 1.4 + 0.24 * len(rows))
    ax = figure.add_subplot()
    changes = [row[0] for row in rows]
    colors = ["#c62828" if c < 0 else "#1e7d32" if c > 0 else "#9e9e9e" for c in changes]
    ax.barh(range(len(rows)), changes, color=colors)
    ax.set_yticks(range(len(rows)), labels=[row[1] for row in rows], fontsize=8, parse_math=False)
    ax.invert_yaxis()
    ax.axvline(0, color="#333", linewidth=0.8)
    if split is not None:
        ax.axhline(split, color="#777", linestyle="--", linewidth=0.8)
    limit = max(0.01, *(abs(c) for c in changes))
    ax.set_xlim(-1.1 * limit, 1.1 * limit)
    ax.set_xlabel("change in top-1 accuracy")
    ax.set_title(title, fontsize=10)
    return _png(figure)


def _class_names(results: Results, size: int) -> list[str]:
    names = {label: name for name, label in results.classes.items()}
    return [str(names.get(label, label)) for label in range(size)]


def _matrix(triples: list[tuple[int, int, int]], size: int) -> Any:
    """The dense confusion matrix, each row as fractions of its true class's images."""
    import numpy as np

    matrix = np.zeros((size, size))
    for true, predicted, count in triples:
        matrix[true, predicted] += count
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _confusion_section(results: Results) -> str:
    models = results.models
    shown: dict[str, list[tuple[int, int, int]]] = {
        name: confusion for name in (REFERENCE, CANDIDATE) if name in models and (confusion := models[name].confusion)
    }
    if not shown:
        return ""
    labels = [label for triples in shown.values() for triple in triples for label in triple[:2]]
    size = max(len(results.classes), max(labels) + 1)
    figure = _figure(11, 5.4 if size <= CONFUSION_LABEL_LIMIT else 5)
    for index, (name, triples) in enumerate(shown.items()):
        _heatmap(
            figure.add_subplot(1, len(shown), index + 1),
            _matrix(triples, size),
            _class_names(results, size) if size <= CONFUSION_LABEL_LIMIT else None,
            name,
            figure,
        )
    note = "Rows: true class; columns: predicted class; colour: share of the true class's images."
    alt = f"Confusion matrices of {' and '.join(shown)}"
    return _section(PLOT_HEADINGS[2], _note(note), _img(_png(figure), alt))


def _heatmap(ax: Any, matrix: Any, names: list[str] | None, title: str, figure: Any) -> None:
    # Crisp cells while they are a few pixels wide; averaged when there are more classes than pixels.
    interpolation = "nearest" if len(matrix) <= 200 else "antialiased"
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation=interpolation)
    if names is not None:
        ticks = range(len(names))
        ax.set_xticks(ticks, labels=names, rotation=90, fontsize=7, parse_math=False)
        ax.set_yticks(ticks, labels=names, fontsize=7, parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, parse_math=False)
    figure.colorbar(image, ax=ax, shrink=0.8)


def _diagnosis_section(results: Results) -> str:
    """Cumulative and local SQNR per quantized tensor in graph order, the findings' layers marked,
    then the findings with their evidence."""
    diagnosis = results.diagnosis
    if diagnosis is None or not diagnosis.layers:
        return ""
    layers = diagnosis.layers
    flagged = {finding.layer for finding in diagnosis.findings}
    culprits = {c.layer for c in results.verdict.culprits} if results.verdict else set()
    figure = _figure(max(8.0, 0.22 * len(layers) + 2), 4.4)
    ax = figure.add_subplot()
    x = list(range(len(layers)))
    curves = (
        ("sqnr_db", "MCT's quantized model, cumulative", "#3b6fb6", "-"),
        ("local_sqnr_db", "MCT's model, local (this layer)", "#e08a2c", "-"),
        ("tflite_sqnr_db", "model_quantized.tflite, cumulative", "#2e8b57", "--"),
    )
    for key, label, color, style in curves:
        values = [getattr(layer, key) for layer in layers]
        if any(value is not None for value in values):
            ax.plot(x, values, marker="o", markersize=3, label=label, color=color, linestyle=style)
    for i, layer in enumerate(layers):
        if layer.layer in flagged:
            ax.axvline(i, color="#c0392b", alpha=0.4, linewidth=6)
    marked = [i for i, layer in enumerate(layers) if layer.layer in culprits]
    if marked:
        top = max((v for layer in layers for v in (layer.sqnr_db, layer.local_sqnr_db) if v is not None), default=0)
        ax.plot(marked, [top + 3] * len(marked), "v", color="#c62828", markersize=10, label="culprit")
    names = [layer.layer if layer.kind != "pre-activation" else f"{layer.layer} (pre-activation)" for layer in layers]
    ax.set_xticks(x, labels=names, rotation=90, fontsize=7, parse_math=False)
    ax.set_ylabel("SQNR, dB (higher is closer to float)")
    ax.set_title(f"Float vs the quantized models on {diagnosis.images} images (red bands: findings)")
    ax.legend(loc="lower left")
    rows = [[_head(f.layer), _cell(f.kind), _cell(f.evidence), _cell(f.suggestion)] for f in diagnosis.findings]
    found = _table(("layer", "finding", "evidence", "suggestion"), rows) if rows else _note("No findings.")
    unmapped = (
        _note(f"Not compared (no float counterpart): {', '.join(u.holder for u in diagnosis.unmapped)}")
        if diagnosis.unmapped
        else ""
    )
    return _section(PLOT_HEADINGS[4], _img(_png(figure), "SQNR per layer"), found, unmapped)


def _recovery_section(results: Results) -> str:
    """Every recovery attempt: the fix, why, its score (top-1, or mAP@[.5:.95] for a detector)
    on the subset and on every image, the drop, the time and how it ended; the published one
    marked."""
    recovery = results.recovery
    if recovery is None:
        return ""
    if recovery.metric == "map_50_95":
        figure: Callable[[Any], str] = _map
        measure = "mAP@[.5:.95]"
        scores = [(_cell(a.subset_map_50_95), _cell(a.map_50_95)) for a in recovery.attempts]
        drops = [_cell(a.map_drop, MISSING if a.map_drop is None else f"{a.map_drop:.1%}") for a in recovery.attempts]
        gate = f"mAP@[.5:.95] to drop by {_pct(recovery.max_map_drop)} of the Keras model's"
        given = (recovery.baseline_map_50_95, recovery.reference_map_50_95)
        subset = (recovery.reference_subset_map_50_95, recovery.baseline_subset_map_50_95)
    else:
        figure, measure = _pct, "top-1"
        scores = [(_share(a.subset_top_1), _share(a.top_1)) for a in recovery.attempts]
        drops = [_cell(a.top_1_drop, _points(a.top_1_drop)) for a in recovery.attempts]
        gate = f"a top-1 drop of {_points(recovery.max_top1_drop)}"
        given = (recovery.baseline_top_1, recovery.reference_top_1)
        subset = (recovery.reference_subset_top_1, recovery.baseline_subset_top_1)
    rows = [
        [
            _head(f"{a.attempt}{' (published)' if a.attempt == recovery.winner else ''}"),
            _cell(a.description),
            _cell(a.reason),
            *score,
            drop,
            _cell(a.seconds, f"{a.seconds:.1f} s"),
            _cell(a.outcome if a.detail is None else f"{a.outcome}: {a.detail}"),
        ]
        for a, score, drop in zip(recovery.attempts, scores, drops, strict=True)
    ]
    head = ("attempt", "fix", "why", f"subset {measure}", measure, "drop", "time", "outcome")
    table = _table(head, rows) if rows else _note("No attempt fitted the time budget.")
    won = (
        f"Attempt {recovery.winner} is published; its settings are in recovered_configuration.json."
        if recovery.winner
        else "No attempt was within the gate: the configuration's own models are published."
    )
    text = (
        f"The gate allows {gate}; with the configuration as given model_quantized.tflite scored "
        f"{figure(given[0])} against the Keras model's {figure(given[1])}. Each attempt is scored first on "
        f"{recovery.subset_images} images (Keras model {figure(subset[0])}, as given {figure(subset[1])}). "
        f"Stopped: {recovery.stopped}, after {recovery.seconds:.0f} s. {won}"
    )
    untried = _note("Not tried: " + "; ".join(f"{n.fix} ({n.reason})" for n in recovery.not_tried))
    return _section("Recovery", _note(text), table, untried)


def _sizes_section(results: Results) -> str:
    sizes = results.sizes
    bars = {"TFLite float": float(sizes.tflite_bytes), "TFLite quantized": float(sizes.tflite_quantized_bytes)}
    # The other exported files (extra_exports): "TFLite float16" for tflite_float16.
    bars.update(
        {
            f"TFLite {name.removeprefix('tflite_').replace('_', ' ')}": float(model.bytes)
            for name, model in results.models.items()
            if name not in MODELS and model.bytes
        }
    )
    title = f"Model sizes: quantized / float = {sizes.quantized_to_float_ratio:.2f}"
    figure = _figure(6 + 1.2 * max(0, len(bars) - 2), 3.6)
    ax = figure.add_subplot()
    colors = ["#3b6fb6", "#e08a2c", "#6a9f58", "#8e6bb0", "#b5835a"]
    drawn = ax.bar(list(bars), [value / 1024 for value in bars.values()], color=colors[: len(bars)])
    ax.bar_label(drawn, labels=[f"{value / 1024:,.1f} KiB" for value in bars.values()], fontsize=9, padding=2)
    ax.margins(y=0.15)
    ax.set_ylabel("KiB")
    ax.set_title(title)
    note = _note(f"The Keras model has {sizes.keras_parameters:,} parameters.")
    return _section(PLOT_HEADINGS[3], _img(_png(figure), title), note)


# --- Detection ------------------------------------------------------------------------------

#: Drawn sample images: the ground truth and the two models' detections, each in its colour.
SAMPLE_COLOURS = {"truth": (30, 160, 60), "keras": (30, 90, 220), "tflite_quantized": (220, 40, 40)}
SAMPLE_WIDTH = 360
#: A box label's room on a drawn sample (PIL's default font): one below another where they would overlap.
LABEL_WIDTH, LABEL_HEIGHT = 60, 11


def _detection_sections(results: Results) -> tuple[str, ...]:
    return (
        _detection_verdict(results),
        _detection_summary(results),
        _map_gate(results),
        _settings(results),
        _detection_figures(results),
        _per_class_ap(results),
        _detection_samples(results),
        _diagnosis_section(results),
        _recovery_section(results),
        _post_processing(results),
        _sizes_section(results),
        _census(results),
        _imx500(results),
        _latency(results),
        _resources(results),
        _skipped(results),
    )


def detection_verdict_sentence(results: Results) -> str | None:
    """A detector's opening sentence where the mAP gate fails (or, without a gate, mAP@[.5:.95]
    fell): the drop and the culprits the diagnosis names. mAP has no per-image hits, so no paired
    interval is given (results.json's verdict stays null for detection)."""
    from .verdict import culprits

    reference, candidate = results.map_50_95_keras, results.map_50_95_tflite_quantized
    gate = results.gate
    if reference is None or candidate is None or reference <= 0:
        return None
    relative = (reference - candidate) / reference
    if gate.passed if gate is not None else relative <= 0:
        return None
    text = (
        f"Quantization cost {relative:.1%} of the Keras model's mAP@[.5:.95] in model_quantized.tflite "
        f"({reference:.3f} to {candidate:.3f})"
    )
    if gate is not None and gate.max_map_drop is not None:
        text += f", over the gate's {gate.max_map_drop:.1%}"
    text += " (no confidence interval: mAP has no per-image pairs to draw one from)"
    diagnosis = results.diagnosis
    if diagnosis is not None:
        layers = [(row.layer, row.sqnr_db, row.tflite_sqnr_db) for row in diagnosis.layers]
        blamed = culprits(layers, [(f.layer, f.kind) for f in diagnosis.findings])
        if blamed:
            named = ", ".join(f"'{layer}' ({reason.replace('_', ' ')})" for layer, reason in blamed)
            text += f"; the diagnosis points at {'layer' if len(blamed) == 1 else 'layers'} {named}"
    return text + "."


def _detection_verdict(results: Results) -> str:
    recovered = recovery_sentence(results)
    if recovered is not None:
        won = results.recovery is not None and results.recovery.winner is not None
        return f'<p class="verdict{" recovered" if won else ""}">{_e(recovered)}</p>'
    sentence = detection_verdict_sentence(results)
    return f'<p class="verdict">{_e(sentence)}</p>' if sentence else ""


def _detection_summary(results: Results) -> str:
    rows = [[_head(key), _cell(value)] for key, value in results.headline().items()]
    rows += [[_head("image_count"), _cell(results.image_count)], [_head("class_count"), _cell(results.class_count)]]
    return _section("Summary", _table(("result", "value"), rows))


def _map_gate(results: Results) -> str:
    gate = results.gate
    if gate is None or gate.map_drop is None:
        return ""
    verdict = "passed" if gate.passed else "failed"
    text = (
        f"mAP@[.5:.95] drop from {gate.reference} to {gate.candidate}: {_pct(gate.map_drop)} of the reference's "
        f"(at most {_pct(gate.max_map_drop)} allowed)"
    )
    return _section("Accuracy gate", f'<p><span class="gate {verdict}">gate {verdict}</span></p>', _note(text))


def _detection_figures(results: Results) -> str:
    detection = results.detection
    if detection is None:
        return ""
    keys = ("map_50_95", "map_50", "map_75", "map_small", "map_medium", "map_large", "ar_100")
    rows = (
        [_head(name), *(_cell(getattr(figures, key)) for key in keys), _cell(figures.detections)]
        for name, figures in detection.models.items()
    )
    faithful = detection.faithfulness
    note = ""
    if faithful is not None:
        note = _note(
            f"Faithfulness: {faithful.reproduced} of the {faithful.detections} {faithful.reference} detections of "
            f"score >= {faithful.score_threshold} are reproduced by {faithful.candidate} (same class, IoU >= "
            f"{faithful.iou_threshold}): {_pct(faithful.share)}."
        )
    return _section(
        "Detection accuracy (COCO, pycocotools)",
        _table(
            ("model", "mAP@[.5:.95]", "mAP@.5", "mAP@.75", "small", "medium", "large", "AR@100", "detections"), rows
        ),
        note,
    )


def _per_class_ap(results: Results) -> str:
    detection = results.detection
    if detection is None or REFERENCE not in detection.models or CANDIDATE not in detection.models:
        return ""
    before, after = detection.models[REFERENCE].per_class_ap, detection.models[CANDIDATE].per_class_ap
    rows = []
    for name, value in before.items():
        other = after.get(name)
        change = None if value is None or other is None else round(other - value, 4)
        rows.append([_head(name), _cell(value), _cell(other), _cell(change)])
    return _section(
        "Per-class AP change",
        _note(f"AP@[.5:.95] of each class, {REFERENCE} and {CANDIDATE}."),
        _table(("class", REFERENCE, CANDIDATE, "change"), rows),
    )


def _post_processing(results: Results) -> str:
    detection = results.detection
    if detection is None:
        return ""
    outputs = [[_head(name), _cell(text)] for name, text in detection.outputs.items()]
    quantization = results.models.get(CANDIDATE)
    parts = [
        _note(
            "model.tflite and model_quantized.tflite hold the network cut before its post-processing (the TFLite "
            "runtime has no kernel for it); read their outputs by signature name. A deployer runs after them: "
            + detection.deployer_runs
        ),
        _key_values(detection.post_processing, "post-processing"),
        _table(("output", "holds"), outputs),
    ]
    if quantization is not None and quantization.outputs:
        parts.append(_key_values({k: v.document() for k, v in quantization.outputs.items()}, "output quantization"))
    return _section("Post-processing", *parts)


def _detection_samples(results: Results) -> str:
    detection = results.detection
    if detection is None or not detection.samples:
        return ""
    names = {label: name for name, label in results.classes.items()}
    drawn = [png for sample in detection.samples if (png := _drawn_sample(sample, names)) is not None]
    if not drawn:
        return ""
    legend = ", ".join(f"{name} rgb{colour}" for name, colour in SAMPLE_COLOURS.items())
    return _section(
        "Sample detections",
        _note(f"Ground truth and detections of score >= 0.3 on a few evaluation images ({legend})."),
        *(_img(png, "evaluation image with boxes") for png in drawn),
    )


def _drawn_sample(sample: Any, names: dict[int, str]) -> bytes | None:
    """One evaluation image with its boxes drawn, each named by its class (``names``: label ->
    name, the label itself where unnamed), or None where the image cannot be read. The image is
    scaled to the panel's width first, so that the text stays readable."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(sample.image) as opened:
            image = opened.convert("RGB")
    except OSError:
        return None
    scale = SAMPLE_WIDTH / image.width
    scaled = image.resize((SAMPLE_WIDTH, max(1, round(image.height * scale))))
    panels = []
    for name, boxes in (("truth", sample.truth), *sample.detections.items()):
        panel = scaled.copy()
        draw = ImageDraw.Draw(panel)
        colour = SAMPLE_COLOURS.get(name, (0, 0, 0))
        taken: list[tuple[float, float]] = []  # label corners so far: a label never covers another
        for box in sorted(boxes, key=lambda b: -(b.score or 0.0)):
            x, y, w, h = (v * scale for v in box.box)
            draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
            label = names.get(box.label, str(box.label))
            corner = (x + 3, y + 2)
            while any(abs(corner[0] - a) < LABEL_WIDTH and abs(corner[1] - b) < LABEL_HEIGHT for a, b in taken):
                corner = (corner[0], corner[1] + LABEL_HEIGHT)
            taken.append(corner)
            draw.text(corner, label if box.score is None else f"{label} {box.score:.2f}", fill=colour)
        draw.text((6, 6), name, fill=(255, 255, 255))
        panels.append(panel)
    sheet = Image.new("RGB", (SAMPLE_WIDTH * len(panels), max(p.height for p in panels)), (255, 255, 255))
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * SAMPLE_WIDTH, 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
