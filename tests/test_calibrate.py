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


def _images(folder, count: int, corrupt: tuple[int, ...] = ()):
    from PIL import Image

    paths = []
    for i in range(count):
        path = folder / f"{i:02d}.jpg"
        if i in corrupt:
            path.write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", (12, 10), (20 * i, 5 * i, 255 - 10 * i)).save(path)
        paths.append(path)
    return paths


def _config(on_corrupt_image: str = "fail"):
    from mctq_job.config import Config, Preprocessing

    return Config.model_construct(input_tensor_size=8, preprocessing=Preprocessing(), on_corrupt_image=on_corrupt_image)


def test_each_batch_is_the_decoded_images_and_the_next_one_decodes_ahead(tmp_path, monkeypatch):
    import threading
    import time

    from mctq_job import calibrate, images

    paths, config = _images(tmp_path, 12), _config()
    batches = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([6, 7, 8]), np.array([9, 10, 11])]
    expected = [images.load_batch([paths[i] for i in b], 8, config.preprocessing).pixels for b in batches]
    decoded: list[tuple[int, str]] = []
    real = images.load_batch

    def recording(batch_paths, *args, **kwargs):
        decoded.append((paths.index(batch_paths[0]) // 3 + 1, threading.current_thread().name))
        return real(batch_paths, *args, **kwargs)

    monkeypatch.setattr(images, "load_batch", recording)
    done: list[int] = []
    generator = calibrate.representative_dataset(paths, batches, config, on_batch=lambda: done.append(1))()
    for number, want in enumerate(expected, 1):
        (pixels,) = next(generator)
        np.testing.assert_array_equal(pixels, want)
        if number < len(batches):  # the next batch starts decoding before MCT asks for it
            deadline = time.monotonic() + 10
            while (number + 1) not in {n for n, _ in decoded} and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (number + 1) in {n for n, _ in decoded}, f"batch {number + 1} was not decoded ahead"
    assert list(generator) == [] and len(done) == len(batches)
    assert [n for n, _ in decoded] == [1, 2, 3, 4]
    assert all(thread.startswith("mctq-calibration") for _, thread in decoded)


def test_a_batch_nothing_of_decodes_is_named_when_its_turn_comes(tmp_path):
    from mctq_job import calibrate
    from mctq_job.errors import InputDataError

    paths = _images(tmp_path, 6, corrupt=(3, 4, 5))
    skipped: list = []
    generator = calibrate.representative_dataset(
        paths,
        [np.array([0, 1, 2]), np.array([3, 4, 5])],
        _config("skip"),
        on_skip=lambda path, reason: skipped.append(path),
    )()
    assert next(generator)[0].shape == (3, 8, 8, 3)
    with pytest.raises(InputDataError, match="calibration batch 2 could be decoded"):
        next(generator)
    assert skipped == paths[3:]


def test_a_generator_left_early_leaves_no_decoding_thread(tmp_path):
    import threading

    from mctq_job import calibrate

    paths = _images(tmp_path, 9)
    before = set(threading.enumerate())
    generator = calibrate.representative_dataset(paths, [np.array([i, i + 1, i + 2]) for i in (0, 3, 6)], _config())()
    next(generator)
    generator.close()
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("mctq-calibration")]
