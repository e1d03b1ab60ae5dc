"""report.html drawn from results.json as the job builds it (``report.results`` on the stages'
values, see results_support): the right number of embedded PNGs, nothing fetched from
elsewhere, user strings escaped, optional sections left out, and (pytest -m browser) the page
really renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from browser_support import assert_renders_in_browser
from PIL import Image
from results_support import evaluation, run_values

from mctq_job import artifacts, report, report_html
from mctq_job.results import MODELS, Results

#: The report's input comes from the real producer: a real TFLite file's census, the evaluate
#: stage's own types (TensorFlow).
pytestmark = pytest.mark.slow

NASTY = '<b>&"cat"'
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
EXTERNAL = re.compile(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', re.IGNORECASE)


def predictions(correct: list[int], images: int) -> np.ndarray:
    """Per image, class by class: the first ``correct[label]`` right, the others taken for the next class."""
    size = len(correct)
    return np.concatenate(
        [[label] * right + [(label + 1) % size] * (images - right) for label, right in enumerate(correct)]
    )


def synthetic_results(class_count: int = 10, images: int = 10, **options) -> Results:
    """results.json for ``class_count`` classes of ``images`` evaluation images, NASTY among the
    class names; the quantized models lose an image on some classes and gain one on others.
    ``options`` go to results_support.run_values (gate, IMX500 package, ...)."""
    names = [NASTY] + [f"class_{label}" for label in range(1, class_count)]
    base = [images - 1 - (label % 3 == 0) for label in range(class_count)]
    changed = [
        right - 1 if label % 4 == 0 else min(images, right + (label % 5 == 1)) for label, right in enumerate(base)
    ]
    labels = np.repeat(np.arange(class_count), images)
    predicted = {name: predictions(changed if name.endswith("quantized") else base, images) for name in MODELS}
    options.setdefault("skipped", ((Path("validation/<script>x.png"), "not an image"),))
    options.setdefault("files", {"tflite_quantized": "/out/<tflite_quantized>.tflite"})
    values = run_values(evaluation(labels, predicted), {name: label for label, name in enumerate(names)}, **options)
    return report.results(values)


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
def results() -> Results:
    return synthetic_results(max_top1_drop=0.05, mixed_precision=True, imx500=True, diagnosis=True)


@pytest.fixture(scope="module")
def page(results) -> str:
    return report_html.render(results)


def test_the_diagnosis_names_the_unbalanced_concatenation_and_shows_its_evidence(page):
    """The diagnosis section of a real diagnosis (an unbalanced concatenation, found by the
    diagnose stage's own functions): the finding's layer, kind and range ratio are on the page."""
    text = section(page, report_html.PLOT_HEADINGS[4])
    assert "<td>unbalanced_concatenation</td>" in text and "<th>concat</th>" in text
    assert "range_ratio" in text and "16-bit activations" in text


def test_the_page_embeds_one_png_per_plot(page):
    assert page.count("<img") == len(report_html.PLOT_HEADINGS) == len(pngs(page))
    for heading in (
        "Summary",
        "Accuracy gate",
        "Settings",
        *report_html.PLOT_HEADINGS,
        "TFLite operator census",
        "IMX500 package",
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


def test_the_summary_shows_the_notebook_accuracies_and_the_gate(page, results):
    summary = section(page, "Summary")
    for name in MODELS:
        assert f"top_1_accuracy_{name}" in summary
    assert results.gate is not None and results.gate.passed
    assert 'class="gate passed"' in page and f"{100 * results.gate.top_1_drop:.2f} percentage points" in page
    failed = synthetic_results(max_top1_drop=0.0)
    assert failed.gate is not None and not failed.gate.passed
    assert 'class="gate failed"' in report_html.render(failed)


def test_settings_and_resource_utilization_are_generic_key_values(page):
    settings = section(page, "Settings")
    assert "target_platform" in settings and "imx500" in settings and "mixed_precision" in settings
    assert "classification" in settings and "distinct_images_drawn" in settings
    resources = section(page, "MCT resource utilization")
    assert "float_8bit" in resources and "final" in resources and "363,896,832" in resources
    assert "n/a" in resources  # MCT's unbounded activation memory under mixed precision


def test_the_imx500_section_shows_the_memory_reports_facts(page, results):
    chip = section(page, "IMX500 package")
    assert results.imx500 is not None and "fits the IMX500" in chip
    assert f"{results.imx500.total_memory_bytes:,}" in chip and results.imx500.converter_version in chip


def test_more_than_40_classes_show_only_the_20_worst_and_20_best():
    doc = synthetic_results(class_count=60)
    page = report_html.render(doc)
    assert page.count("<img") == 4 and len(pngs(page)) == 4
    per_class = section(page, "Per-class change")
    assert "60 classes: only the 20 with the largest drop and the 20 with the largest gain" in per_class
    assert per_class.count("<tr>") == 1 + 40
    changes = sorted(
        (
            doc.models["tflite_quantized"].per_class[n].top_1_accuracy
            - doc.models["keras"].per_class[n].top_1_accuracy,
            n,
        )
        for n in doc.classes
    )
    shown = re.findall(r"<tr><th>([^<]*)</th>", per_class.split("<tbody>")[1])
    assert shown == [report_html.html.escape(n) for _, n in changes[:20] + changes[-20:]]


def test_optional_sections_are_left_out_without_their_data():
    """No gate, no IMX500 package, no skipped image, no mixed precision: their sections go, the
    resource table keeps the 8-bit column alone."""
    doc = synthetic_results(skipped=())
    assert doc.gate is None and doc.imx500 is None and doc.resource_utilization.final is None
    page = report_html.render(doc)
    for heading in ("Accuracy gate", "IMX500 package", "Skipped images"):
        assert f"<h2>{heading}" not in page
    assert page.count("<img") == 4 == len(pngs(page))
    resources = section(page, "MCT resource utilization")
    assert "float_8bit" in resources and "final" not in resources


def test_a_results_json_read_back_gives_the_same_page(results, page, tmp_path):
    """The page from the file as written (parsed through the model) equals the page from the model."""
    path = tmp_path / "results.json"
    path.write_bytes(artifacts.json_bytes(results.document()))
    assert report_html.render(Results.read(path)) == page


def test_the_same_results_give_the_same_page(results, page):
    assert report_html.render(results.model_copy()) == page


@pytest.mark.browser
def test_the_page_renders_in_chromium(page, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    seen = assert_renders_in_browser(path, min_images=len(report_html.PLOT_HEADINGS))
    assert len(seen["images"]) == len(report_html.PLOT_HEADINGS)
    assert {"Summary", "Accuracy gate", "Latency"} <= set(seen["headings"])


def test_a_drawn_detection_sample_is_scaled_first_and_names_the_classes(tmp_path):
    """Each panel is the image at the panel's width with the boxes scaled onto it (a 2-pixel
    outline in the panel's colour where the box is) and each box labelled by its class name."""
    import io

    from PIL import Image

    from mctq_job.report_html import SAMPLE_COLOURS, SAMPLE_WIDTH, _drawn_sample
    from mctq_job.results import DetectionSample, SampleBox

    image = tmp_path / "frame.jpg"
    Image.new("RGB", (1440, 1080), (128, 128, 128)).save(image, quality=95)
    box = SampleBox(label=1, box=[400.0, 300.0, 600.0, 400.0], score=None)
    found = SampleBox(label=1, box=[400.0, 300.0, 600.0, 400.0], score=0.9)
    sample = DetectionSample(
        image=str(image), width=1440, height=1080, truth=[box], detections={"tflite_quantized": [found]}
    )
    named, numbered = _drawn_sample(sample, {1: "bicycle"}), _drawn_sample(sample, {})
    assert named is not None and numbered is not None and named != numbered
    sheet = Image.open(io.BytesIO(named)).convert("RGB")
    assert sheet.size == (2 * SAMPLE_WIDTH, 270)
    scale = SAMPLE_WIDTH / 1440
    for panel, name in enumerate(("truth", "tflite_quantized")):
        x = panel * SAMPLE_WIDTH + round((400 + 300) * scale)  # the middle of the box's top edge
        assert sheet.getpixel((x, round(300 * scale))) == SAMPLE_COLOURS[name]
        assert sheet.getpixel((x, round(300 * scale) + 10)) == (128, 128, 128)
    assert (
        _drawn_sample(DetectionSample(image=str(tmp_path / "gone.jpg"), width=1, height=1, truth=[], detections={}), {})
        is None
    )
