"""Is there a drop, and where does it come from: the top-1 drop from the Keras model to
model_quantized.tflite with a 95 % interval, and the layers to blame (pure functions, no
TensorFlow).

The two models are scored on the same images, so the drop is a difference of *paired*
proportions: only the images on which exactly one of them is right carry information. The
interval is Newcombe's hybrid score interval for paired proportions (his method 10, without
continuity correction: Newcombe 1998, "Improved confidence intervals for the difference between
binomial proportions based on paired data"): each model's accuracy gets a Wilson score
interval, and the two are combined with the correlation between the models' hits. Unlike the
simple Wald interval it stays inside [-1, 1] and keeps its coverage when the models disagree
on only a few images: a one-image difference on 250 images gives an interval that contains 0,
so it is not called a drop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Two-sided 95 %: the standard normal's 97.5th percentile.
Z95 = 1.959963984540054
#: A point whose cumulative SQNR falls by at least this much from the point before it, where no
#: finding names a layer, is named as the culprit.
SQNR_FALL_DB = 10.0


@dataclass(frozen=True)
class Paired:
    """Per-image top-1 hits of two models on the same images, as the four counts of the 2x2 table."""

    both: int  # both right
    reference_only: int  # the reference right, the candidate wrong
    candidate_only: int  # the candidate right, the reference wrong
    neither: int

    @property
    def images(self) -> int:
        return self.both + self.reference_only + self.candidate_only + self.neither

    @classmethod
    def of(cls, reference_hits: Sequence[bool], candidate_hits: Sequence[bool]) -> Paired:
        if len(reference_hits) != len(candidate_hits):
            raise ValueError(f"{len(reference_hits)} reference hits against {len(candidate_hits)} candidate hits")
        pairs = list(zip(map(bool, reference_hits), map(bool, candidate_hits), strict=True))
        return cls(
            pairs.count((True, True)),
            pairs.count((True, False)),
            pairs.count((False, True)),
            pairs.count((False, False)),
        )


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    centre = 2 * successes + z * z
    spread = z * math.sqrt(z * z + 4 * successes * (1 - successes / n))
    return max(0.0, (centre - spread) / (2 * (n + z * z))), min(1.0, (centre + spread) / (2 * (n + z * z)))


def drop_interval(table: Paired, z: float = Z95) -> tuple[float, float, float]:
    """(drop, low, high): reference accuracy minus candidate accuracy, and its interval
    (Newcombe's method 10)."""
    n = table.images
    if n == 0:
        raise ValueError("no images")
    a, b, c, d = table.both, table.reference_only, table.candidate_only, table.neither
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denominator) if denominator else 0.0
    drop = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return drop, max(-1.0, drop - below), min(1.0, drop + above)


def culprits(
    layers: Sequence[tuple[str, float | None, float | None]], findings: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """(layer, reason) to blame for a drop, from the diagnosis: every layer a finding names (its
    kind is the reason), in the findings' order; where there is none, the point where
    model_quantized.tflite's cumulative SQNR falls at least SQNR_FALL_DB below MCT's model's
    ("export"), else the point where MCT's cumulative SQNR falls the most, by at least
    SQNR_FALL_DB from the point before ("sqnr_fall"). ``layers``: (layer, MCT's SQNR, the TFLite
    file's SQNR) in graph order; ``findings``: (layer, kind)."""
    named: dict[str, str] = {}
    for layer, kind in findings:
        named.setdefault(layer, kind)
    if named:
        return list(named.items())
    for layer, mct, tflite in layers:
        if mct is not None and tflite is not None and mct - tflite >= SQNR_FALL_DB:
            return [(layer, "export")]
    falls = [
        (previous[1] - current[1], current[0])
        for previous, current in zip(layers, layers[1:], strict=False)
        if previous[1] is not None and current[1] is not None
    ]
    fall, layer = max(falls, default=(0.0, ""))
    return [(layer, "sqnr_fall")] if fall >= SQNR_FALL_DB else []
