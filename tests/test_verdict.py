"""The drop's 95 % interval from paired per-image hits, against hand-computed cases, and the
culprits the diagnosis names (pure arithmetic: no TensorFlow)."""

from __future__ import annotations

import math

import pytest

from mctq_job.verdict import SQNR_FALL_DB, Paired, culprits, drop_interval, wilson


def test_wilson_matches_the_published_score_interval():
    """Newcombe's single-proportion example, 81 of 263: Wilson's interval 0.2553 to 0.3662."""
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_wilson_is_the_root_of_the_score_equation():
    """Each end p solves |x/n - p| = z sqrt(p (1 - p) / n), found here by bisection."""
    z, x, n = 1.959963984540054, 7, 40

    def root(lo: float, hi: float) -> float:
        f = lambda p: abs(x / n - p) - z * math.sqrt(p * (1 - p) / n)  # noqa: E731
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (f(lo) > 0) == (f(mid) > 0) else (lo, mid)
        return (lo + hi) / 2

    low, high = wilson(x, n)
    assert low == pytest.approx(root(1e-12, x / n), abs=1e-9)
    assert high == pytest.approx(root(x / n, 1 - 1e-12), abs=1e-9)


def test_uncorrelated_hits_combine_the_two_wilson_intervals_as_squares():
    """With a d = b c the correlation is 0: the ends are drop -/+ the root of the summed squares
    of the Wilson half-widths on the matching sides. (4, 2, 2, 1) of 9: both accuracies 6/9."""
    drop, low, high = drop_interval(Paired(both=4, reference_only=2, candidate_only=2, neither=1))
    lower, upper = wilson(6, 9)
    p = 6 / 9
    assert drop == 0
    assert low == pytest.approx(-math.sqrt((p - lower) ** 2 + (upper - p) ** 2))
    assert high == pytest.approx(math.sqrt((upper - p) ** 2 + (p - lower) ** 2))


def test_independent_samples_example_of_newcombe():
    """The same combination gives Newcombe's unpaired example, 56/70 against 48/80: 0.0524 to
    0.3339 (his method 10); the paired form with correlation 0 is exactly that arithmetic."""
    (l1, u1), (l2, u2) = wilson(56, 70), wilson(48, 80)
    p1, p2 = 56 / 70, 48 / 80
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


def test_a_paired_case_by_hand():
    """(36, 12, 2, 0) of 50: accuracies 48/50 and 38/50, drop 0.2; phi = (0 - 24) / sqrt(48 2 38 12)."""
    drop, low, high = drop_interval(Paired(36, 12, 2, 0))
    (l1, u1), (l2, u2) = wilson(48, 50), wilson(38, 50)
    p1, p2 = 0.96, 0.76
    phi = -24 / math.sqrt(48 * 2 * 38 * 12)
    below = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    above = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    assert drop == pytest.approx(0.2)
    assert (low, high) == (pytest.approx(0.2 - below), pytest.approx(0.2 + above))
    assert (round(low, 4), round(high, 4)) == (0.0569, 0.3404)


@pytest.mark.parametrize(
    ("lost", "gained", "measurable"),
    [(1, 0, False), (2, 0, False), (3, 1, False), (8, 0, True), (20, 2, True), (0, 5, False)],
)
def test_a_one_image_difference_on_250_images_is_not_a_drop(lost, gained, measurable):
    """250 images, 200 right by both: the interval lies above 0 only when the lost images clearly
    outnumber the gained ones."""
    table = Paired(both=200, reference_only=lost, candidate_only=gained, neither=50 - lost - gained)
    drop, low, high = drop_interval(table)
    assert drop == pytest.approx((lost - gained) / 250)
    assert low <= drop <= high
    assert (low > 0) == measurable


def test_paired_counts_from_per_image_hits():
    table = Paired.of([True, True, False, False, True], [True, False, True, False, False])
    assert table == Paired(both=1, reference_only=2, candidate_only=1, neither=1)
    with pytest.raises(ValueError):
        Paired.of([True], [True, False])


def test_culprits_come_from_findings_then_the_export_then_the_largest_sqnr_fall():
    layers = [("image", 50.0, 50.0), ("conv", 45.0, 44.9), ("concat", 40.0, 40.1), ("bn", 2.0, 2.1)]
    assert culprits(layers, [("concat", "unbalanced_concatenation"), ("concat", "outlier_channel")]) == [
        ("concat", "unbalanced_concatenation")
    ]
    assert culprits(layers, []) == [("bn", "sqnr_fall")]
    exported = [("image", 50.0, 50.0), ("conv", 45.0, 45.0 - SQNR_FALL_DB), ("bn", 2.0, 2.0)]
    assert culprits(exported, []) == [("conv", "export")]
    healthy = [("image", 50.0, None), ("conv", 45.0, None), ("dense", 41.0, 40.0)]
    assert culprits(healthy, []) == []


def _results_with(lost: int, gained: int, images: int = 250, culprits: tuple = ()):
    from types import SimpleNamespace

    from mctq_job.results import Verdict

    drop, low, high = drop_interval(Paired(images - 50 - lost - gained, lost, gained, 50))
    verdict = Verdict(
        reference="keras",
        candidate="tflite_quantized",
        images=images,
        reference_only_correct=lost,
        candidate_only_correct=gained,
        top_1_drop=drop,
        low=low,
        high=high,
        confidence=0.95,
        measurable=low > 0,
        culprits=[{"layer": layer, "reason": reason} for layer, reason in culprits],
    )
    return SimpleNamespace(verdict=verdict)


def test_the_verdict_sentence_tells_a_drop_from_chance_and_names_the_culprit():
    from mctq_job.report_html import verdict_sentence

    sentence = verdict_sentence(_results_with(30, 2, culprits=(("concat", "unbalanced_concatenation"),)))
    assert sentence is not None
    assert sentence.startswith("Quantization cost 11.2 points of top-1 from the Keras model to model_quantized.tflite")
    assert "30 of 250 images lost, 2 gained" in sentence
    assert sentence.endswith("the diagnosis points at layer 'concat' (unbalanced concatenation).")
    one = verdict_sentence(_results_with(1, 0))
    assert one is not None and one.startswith("Top-1 fell by 0.4 points") and "chance explains" in one
    assert "includes no drop" in one
    assert verdict_sentence(_results_with(0, 0)) is None and verdict_sentence(_results_with(0, 3)) is None
