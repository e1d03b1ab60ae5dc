"""report.html: a self-contained page drawn from a synthetic results.json (version 2): the
right number of embedded PNGs, nothing fetched from elsewhere, user strings escaped, optional
sections left out, and (pytest -m browser) the page really renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import re

import pytest
from browser_support import assert_renders_in_browser
from PIL import Image

from mctq_job import report_html

MODELS = report_html.MODELS
NASTY = '<b>&"cat"'
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
EXTERNAL = re.compile(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', re.IGNORECASE)


def per_class(names: list[str], correct: list[int], images: int) -> dict:
    return {
        name: {"label": label, "images": images, "correct": right, "top_1_accuracy": right / images}
        for label, (name, right) in enumerate(zip(names, correct, strict=False))
    }


def confusion(correct: list[int], images: int) -> list[list[int]]:
    """Each class's misses go to the next class."""
    size = len(correct)
    triples = {(label, label): right for label, right in enumerate(correct) if right}
    for label, right in enumerate(correct):
        if images - right:
            triples[(label, (label + 1) % size)] = images - right
    return [[t, p, n] for (t, p), n in sorted(triples.items())]


def model(name: str, names: list[str], correct: list[int], images: int) -> dict:
    total = images * len(names)
    quantized = name.endswith("quantized")
    tflite = name.startswith("tflite")
    return {
        "description": f"{name} model",
        "file": f"/out/<{name}>.tflite" if tflite else None,
        "bytes": (150_000 if quantized else 550_000) if tflite else None,
        "correct": sum(correct),
        "top_1_accuracy": sum(correct) / total,
        "top_5_accuracy": 1.0,
        "per_class": per_class(names, correct, images),
        "confusion": confusion(correct, images),
        "inference": {"batch_size": 32, "threads": 2, "ms_per_image": 0.41},
        "latency": {"batch_size": 1, "threads": 2, "warmup_runs": 3, "runs": 20, "median_ms": 1.2, "p90_ms": 1.5},
    }


def synthetic_results(class_count: int = 10, images: int = 10) -> dict:
    """A results.json (version 2) with NASTY among the class names; the quantized models lose
    an image on some classes and gain one on others."""
    names = [NASTY] + [f"class_{label}" for label in range(1, class_count)]
    base = [images - 1 - (label % 3 == 0) for label in range(class_count)]
    changed = [
        right - 1 if label % 4 == 0 else min(images, right + (label % 5 == 1)) for label, right in enumerate(base)
    ]
    models = {name: model(name, names, changed if name.endswith("quantized") else base, images) for name in MODELS}
    total = images * class_count
    return {
        **{f"top_1_accuracy_{name}": models[name]["top_1_accuracy"] for name in MODELS},
        "results_version": 2,
        "image_count": total,
        "class_count": class_count,
        "classes": {name: label for label, name in enumerate(names)},
        "quantization": {
            "target_platform": "imx500",
            "target_platform_version": "1.0",
            "method": "ptq",
            "gptq": None,
            "mixed_precision": None,
            "export_format": "int8",
        },
        "seed": 0,
        "calibration": {"images": 64, "batch_size": 16},
        "skipped_images": [{"path": "validation/<script>x.png", "reason": "not an image"}],
        "models": models,
        "agreement": {
            "keras_vs_keras_quantized": 0.99,
            "tflite_vs_tflite_quantized": 0.99,
            "keras_vs_tflite_quantized": 0.98,
        },
        "sizes": {
            "keras_parameters": 136000,
            "tflite_bytes": 550000,
            "tflite_quantized_bytes": 150000,
            "quantized_to_float_ratio": 0.2727,
        },
        "resource_utilization": {
            "float_8bit": {
                "weights_memory": 136752.0,
                "activation_memory": 19456.0,
                "total_memory": 156208.0,
                "bops": 363896832,
            },
            "final": {"weights_memory": 40000.0, "activation_memory": None, "total_memory": None, "bops": None},
        },
        "gate": {
            "reference": "keras",
            "candidate": "tflite_quantized",
            "top_1_drop": 0.011,
            "max_top1_drop": 0.02,
            "passed": True,
        },
        "volatile_fields": ["models.*.inference", "models.*.latency"],
    }


def pngs(page: str) -> list[Image.Image]:
    images = []
    for data in DATA_URI.findall(page):
        raw = base64.b64decode(data, validate=True)
        assert len(raw) > 5_000, "a plot this small is empty"
        image = Image.open(io.BytesIO(raw))
        image.load()
        assert image.format == "PNG" and min(image.size) > 200, (image.format, image.size)
        images.append(image)
    return images


def section(page: str, heading: str) -> str:
    """The text of one section, from its heading to the next."""
    start = page.index(f"<h2>{heading}")
    return page[start : page.find("<h2>", start + 4) if "<h2>" in page[start + 4 :] else len(page)]


@pytest.fixture(scope="module")
def page() -> str:
    return report_html.render(synthetic_results())


def test_the_page_embeds_one_png_per_plot(page):
    assert page.count("<img") == len(report_html.PLOT_HEADINGS) == len(pngs(page))
    for heading in (
        "Summary",
        "Accuracy gate",
        "Settings",
        *report_html.PLOT_HEADINGS,
        "Agreement",
        "Latency",
        "MCT resource utilization",
        "Skipped images (1)",
    ):
        assert f"<h2>{heading}</h2>" in page, heading


def test_the_page_refers_to_nothing_outside_itself(page):
    assert not EXTERNAL.search(page)
    assert "<script" not in page and "<link" not in page and "url(" not in page


def test_user_strings_are_escaped(page):
    assert "&lt;b&gt;&amp;&quot;cat&quot;" in page
    assert NASTY not in page
    assert "&lt;script&gt;x.png" in page and "/out/&lt;tflite_quantized&gt;.tflite" in page
    assert "<script" not in page


def test_the_summary_shows_the_notebook_accuracies_and_the_gate(page):
    summary = section(page, "Summary")
    for name in MODELS:
        assert f"top_1_accuracy_{name}" in summary
    assert 'class="gate passed"' in page and "1.10 percentage points" in page
    failed = synthetic_results()
    failed["gate"].update(top_1_drop=0.05, passed=False)
    assert 'class="gate failed"' in report_html.render(failed)


def test_settings_and_resource_utilization_are_generic_key_values(page):
    settings = section(page, "Settings")
    assert "target_platform" in settings and "imx500" in settings and "mixed_precision" in settings
    resources = section(page, "MCT resource utilization")
    assert "float_8bit" in resources and "final" in resources and "363,896,832" in resources
    assert "n/a" in resources


def test_more_than_40_classes_show_only_the_20_worst_and_20_best():
    doc = synthetic_results(class_count=60)
    page = report_html.render(doc)
    assert page.count("<img") == 4 and len(pngs(page)) == 4
    per_class = section(page, "Per-class change")
    assert "60 classes: only the 20 with the largest drop and the 20 with the largest gain" in per_class
    assert per_class.count("<tr>") == 1 + 40
    changes = sorted(
        (
            doc["models"]["tflite_quantized"]["per_class"][n]["top_1_accuracy"]
            - doc["models"]["keras"]["per_class"][n]["top_1_accuracy"],
            n,
        )
        for n in doc["classes"]
    )
    shown = re.findall(r"<tr><th>([^<]*)</th>", per_class.split("<tbody>")[1])
    assert shown == [report_html.html.escape(n) for _, n in changes[:20] + changes[-20:]]


def test_optional_sections_are_left_out_without_their_data():
    doc = synthetic_results()
    doc.update(gate=None, resource_utilization=None, skipped_images=[], sizes=None)
    doc["models"]["tflite_quantized"]["latency"] = None
    page = report_html.render(doc)
    for heading in ("Accuracy gate", "MCT resource utilization", "Skipped images", "Model sizes"):
        assert f"<h2>{heading}" not in page
    assert page.count("<img") == 3 == len(pngs(page))
    doc["resource_utilization"] = {"float_8bit": None, "final": None}
    assert "MCT resource utilization" not in report_html.render(doc)


def test_a_bare_document_still_renders():
    page = report_html.render({"top_1_accuracy_keras": 0.5})
    assert "<h2>Summary</h2>" in page and "<img" not in page and "n/a" in page


def test_the_same_results_give_the_same_page(page):
    assert report_html.render(synthetic_results()) == page


@pytest.mark.browser
def test_the_page_renders_in_chromium(page, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    seen = assert_renders_in_browser(path, min_images=4)
    assert len(seen["images"]) == 4
    assert {"Summary", "Accuracy gate", "Latency"} <= set(seen["headings"])
