"""Decoding and the one preprocessing every model sees."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import declare_huge_jpeg, save_image
from PIL import Image

from mctq_job import images
from mctq_job.config import Preprocessing
from mctq_job.errors import InputDataError


def test_shorter_side_resize_then_centre_crop_matches_the_notebook_geometry():
    """224 input: shorter side to 256, centre 224 crop; the crop keeps the middle."""
    img = Image.new("RGB", (400, 300))
    img.paste((255, 0, 0), (0, 0, 400, 300))
    img.paste((0, 255, 0), (150, 100, 250, 200))  # a green square in the centre
    out = images.resize(img, 224, Preprocessing())
    assert out.size == (224, 224)
    # 300 -> 256 (scale 0.8533): width 341; crop offsets (58, 16); the green square lands in the middle
    arr = np.asarray(out)
    assert tuple(arr[112, 112]) == (0, 255, 0)
    assert tuple(arr[2, 2]) == (255, 0, 0)


def test_stretch_ignores_the_aspect_ratio():
    out = images.resize(Image.new("RGB", (400, 100)), 32, Preprocessing(resize="stretch"))
    assert out.size == (32, 32)


def test_letterbox_keeps_the_aspect_ratio_and_pads_the_square_with_grey():
    """400x100 into 32: scaled to 32x8, centred at top 12; the rest is the YOLO family's grey."""
    img = Image.new("RGB", (400, 100), (255, 0, 0))
    out = np.asarray(images.resize(img, 32, Preprocessing(resize="letterbox", interpolation="nearest")))
    assert out.shape == (32, 32, 3)
    red = np.all(out == (255, 0, 0), axis=-1)
    assert red[12:20].all() and not red[:12].any() and not red[20:].any()
    assert (out[:12] == 114).all() and (out[20:] == 114).all()
    assert images.placement((400, 100), 32, Preprocessing(resize="letterbox")) == images.Placement(0, 12, 32, 8)


def test_a_tall_image_is_letterboxed_left_and_right():
    where = images.placement((90, 300), 64, Preprocessing(resize="letterbox"))
    assert where == images.Placement(22, 0, 19, 64)  # 90 * 64/300 = 19.2 -> 19, left (64 - 19) // 2 = 22
    out = np.asarray(images.resize(Image.new("RGB", (90, 300), (0, 0, 255)), 64, Preprocessing(resize="letterbox")))
    assert (out[:, :22] == 114).all() and (out[:, 41:] == 114).all() and (out[:, 23:40, 2] == 255).all()


def test_the_centre_crops_placement_is_the_notebook_geometry():
    """The same numbers as the crop above: 400x300 -> 341x256, offsets (58, 16)."""
    assert images.placement((400, 300), 224, Preprocessing()) == images.Placement(-58, -16, 341, 256)


@pytest.mark.parametrize(
    "spec,pixel,expected",
    [
        (Preprocessing(), 255, 1.0),
        (Preprocessing(), 0, -1.0),
        (Preprocessing(preset="unit"), 255, 1.0),
        (Preprocessing(preset="none"), 17, 17.0),
        (Preprocessing(mean=[10, 10, 10], std=[2, 2, 2]), 30, 10.0),
    ],
)
def test_normalization(spec, pixel, expected):
    arr = images.to_array(Image.new("RGB", (2, 2), (pixel,) * 3), spec)
    assert arr.dtype == np.float32 and arr.shape == (2, 2, 3)
    assert np.allclose(arr, expected)


def test_bgr_swaps_channels():
    arr = images.to_array(Image.new("RGB", (1, 1), (255, 0, 0)), Preprocessing(channel_order="bgr", preset="none"))
    assert arr[0, 0].tolist() == [0.0, 0.0, 255.0]


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("P", ".bmp")])
def test_grey_rgba_cmyk_and_palette_images_are_converted_to_rgb(tmp_path, mode, suffix):
    path = save_image(tmp_path / f"img{suffix}", mode=mode)
    batch = images.load_batch([path], 8, Preprocessing())
    assert batch.pixels.shape == (1, 8, 8, 3) and batch.kept == [0] and batch.skipped == []


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_undecodable_image_names_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        good = save_image(tmp_path / "good.png", size=(64, 64), color=(1, 2, 3))
        path.write_bytes(good.read_bytes()[:60])
    else:
        path.write_bytes(content)
    with pytest.raises(InputDataError) as info:
        images.load_batch([path], 8, Preprocessing())
    assert str(path) in info.value.message and "expected a readable JPEG, PNG or BMP" in info.value.message


def test_any_failure_of_the_image_library_is_the_files_fault(tmp_path):
    """PIL refuses a JPEG declaring 60000 x 60000 pixels with DecompressionBombError, neither an
    OSError nor a ValueError: still an input error naming the file and saying what PIL said,
    and under skip_corrupt a skipped image like any other."""
    from PIL.Image import DecompressionBombError

    path = declare_huge_jpeg(save_image(tmp_path / "huge.jpg"))
    with pytest.raises(DecompressionBombError):
        Image.open(path)  # the premise: PIL's own exception is of this kind
    with pytest.raises(InputDataError) as info:
        images.load_batch([path], 8, Preprocessing())
    assert info.value.context == {"file": str(path)}
    assert f"cannot decode image {path}: DecompressionBombError: " in info.value.message
    good = save_image(tmp_path / "good.jpg")
    batch = images.load_batch([path, good], 8, Preprocessing(), skip_corrupt=True)
    assert batch.kept == [1] and batch.skipped[0][0] == path


def test_skip_corrupt_leaves_the_image_out_and_says_why(tmp_path):
    good = [save_image(tmp_path / f"{i}.png", size=(4, 4)) for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 then nothing")
    batch = images.load_batch([good[0], bad, good[1], good[2]], 4, Preprocessing(), skip_corrupt=True)
    assert batch.pixels.shape == (3, 4, 4, 3) and batch.kept == [0, 2, 3]
    assert batch.skipped[0][0] == bad and "cannot decode image" in batch.skipped[0][1]


@pytest.mark.parametrize("content,reason", [(b"", "is empty"), (b"GIF89a....", "is not a JPEG, PNG or BMP")])
def test_sniff_catches_empty_and_foreign_files_cheaply(tmp_path, content, reason):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    assert reason in images.sniff(path)
    assert images.sniff(save_image(tmp_path / "ok.bmp")) is None


def test_iter_batches_keeps_order_and_covers_every_image(tmp_path):
    paths = [save_image(tmp_path / f"{i}.png", color=(i, i, i), size=(4, 4)) for i in range(7)]
    got = list(images.iter_batches(paths, 3, 4, Preprocessing(preset="none")))
    assert [start for start, _ in got] == [0, 3, 6]
    values = np.concatenate([b.pixels[:, 0, 0, 0] for _, b in got])
    assert values.tolist() == list(range(7))


def test_scan_reports_links_and_other_files(tmp_path):
    save_image(tmp_path / "a" / "x.PNG")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "ln.png").symlink_to(tmp_path / "a" / "x.PNG")
    found = images.scan(tmp_path, images.CALIBRATION_EXTENSIONS)
    assert [p.name for p in found.files] == ["x.PNG"]
    assert [p.name for p in found.links] == ["ln.png"]
    assert found.other_extensions == {"txt": 1}
