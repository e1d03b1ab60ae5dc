"""Calibration batches: seeded, without replacement until the pool is used up."""

from __future__ import annotations

import numpy as np
import pytest

from mctq_job.calibrate import draw_batches


def test_batches_have_the_configured_shape():
    batches = draw_batches(100, 8, 5, seed=0)
    assert len(batches) == 5 and all(len(b) == 8 for b in batches)


def test_no_image_repeats_until_the_pool_is_used_up():
    drawn = np.concatenate(draw_batches(50, 10, 5, seed=3))
    assert sorted(drawn.tolist()) == list(range(50))


def test_more_draws_than_images_use_every_image_evenly():
    drawn = np.concatenate(draw_batches(7, 3, 7, seed=1))  # 21 draws = 3 full passes
    assert np.bincount(drawn, minlength=7).tolist() == [3] * 7


def test_same_seed_same_batches_other_seed_other_batches():
    a = draw_batches(1000, 16, 4, seed=42)
    assert all((x == y).all() for x, y in zip(a, draw_batches(1000, 16, 4, seed=42), strict=False))
    assert any((x != y).any() for x, y in zip(a, draw_batches(1000, 16, 4, seed=43), strict=False))


def test_batch_size_beyond_the_image_count_is_a_bug_of_the_caller():
    with pytest.raises(ValueError):
        draw_batches(3, 4, 1, seed=0)
