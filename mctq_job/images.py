"""Finding images on disk, decoding them to RGB, and the one preprocessing every model sees.

Discovery never follows symbolic links (the AITRIOS notebook refused them, and so does the job) and matches extensions
case-insensitively. Decoding and preprocessing use PIL and numpy only, so ``validate``
stays free of TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputDataError, first_line

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .config import Preprocessing

CALIBRATION_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "bmp"})


@dataclass
class Scan:
    """What a recursive walk found: matching files, symbolic links met, other files skipped."""

    files: list[Path] = field(default_factory=list)
    links: list[Path] = field(default_factory=list)
    others: int = 0
    other_extensions: dict[str, int] = field(default_factory=dict)


def scan(root: Path, extensions: Iterable[str]) -> Scan:
    """Every file under ``root`` whose extension (any case) is in ``extensions``, sorted."""
    wanted = {e.lower() for e in extensions}
    found = Scan()
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_symlink():
                    found.links.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif _extension(path) in wanted:
                    found.files.append(path)
                else:
                    found.others += 1
                    ext = _extension(path) or "(none)"
                    found.other_extensions[ext] = found.other_extensions.get(ext, 0) + 1
    found.files.sort()
    found.links.sort()
    return found


#: Leading bytes of the formats the job reads.
MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"))


def sniff(path: Path) -> str | None:
    """Why ``path`` cannot be an image the job reads, judged from its first bytes (cheap:
    ten thousand files in a fraction of a second), or None when it looks like one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not head:
        return "is empty (0 bytes)"
    if not any(head.startswith(magic) for magic, _ in MAGIC):
        return "is not a JPEG, PNG or BMP file (its first bytes say otherwise)"
    return None


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header alone: PIL opens the file without decoding
    the pixels (a fraction of a millisecond), as the checks of box annotations need. Raises
    InputDataError naming the file when the header cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the image library on this file
        raise InputDataError(
            f"cannot read the size of image {path}: {_reason(exc)}; expected a readable JPEG, PNG or BMP file",
            file=str(path),
        ) from None


def _extension(path: Path) -> str:
    return path.suffix[1:].lower()


def load_rgb(path: Path) -> Image.Image:
    """Decode one image fully and return it as an RGB PIL image; name the file if it cannot be.

    Whatever PIL raises while opening, decoding or converting the file is the file's fault, not
    only the errors seen so far (OSError, UnidentifiedImageError, SyntaxError, ValueError, but
    also DecompressionBombError, struct.error, IndexError, ... from a plugin's parser): an
    InputDataError naming the file. Only MemoryError passes: it says the machine is short."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated data fails here, not later inside a model
            return img.convert("RGB")
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the image library on this file
        raise InputDataError(
            f"cannot decode image {path}: {_reason(exc)}; expected a readable JPEG, PNG or BMP file", file=str(path)
        ) from None


def _reason(exc: Exception) -> str:
    """PIL's message; for the unusual failures, with the exception's name, which says more than
    a parser's own message (``struct.error: unpack requires a buffer of 4 bytes``)."""
    text = first_line(exc) or "(no message)"
    if isinstance(exc, (OSError, ValueError, SyntaxError)):  # "image file is truncated", ...
        return text
    return f"{type(exc).__name__}: {text}"


def _resample(name: str) -> int:
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


@dataclass(frozen=True)
class Placement:
    """Where a ``width`` x ``height`` image lands in the model's ``size`` x ``size`` input once
    resized: its top-left corner and its size there, in input pixels. The centre crop's corner
    is negative (the image overflows the square); the letterbox's is the padding."""

    left: int
    top: int
    width: int
    height: int

    def to_image(self, x: np.ndarray, y: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Input pixel coordinates -> coordinates in the original image (same arrays' shapes)."""
        image_width, image_height = image_size
        return (x - self.left) * (image_width / self.width), (y - self.top) * (image_height / self.height)


def placement(image_size: tuple[int, int], size: int, spec: Preprocessing) -> Placement:
    """Where ``resize`` puts an image of ``image_size`` (width, height): the one geometry both
    the preprocessing and the mapping of a detector's boxes back to the image use."""
    width, height = image_size
    if spec.resize == "stretch":
        return Placement(0, 0, size, size)
    if spec.resize == "letterbox":
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        return Placement((size - new_w) // 2, (size - new_h) // 2, new_w, new_h)
    short = max(size, round(size / spec.crop_fraction))
    scale = short / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    return Placement(-((new_w - size) // 2), -((new_h - size) // 2), new_w, new_h)


def resize(img: Image.Image, size: int, spec: Preprocessing) -> Image.Image:
    """Resize (and crop, or pad) an RGB image to ``size`` x ``size`` as ``spec`` says."""
    from PIL import Image

    from .config import LETTERBOX_FILL

    resample = _resample(spec.interpolation)
    if spec.resize == "stretch":
        return img.resize((size, size), resample)
    where = placement(img.size, size, spec)
    img = img.resize((where.width, where.height), resample)
    if spec.resize == "letterbox":
        square = Image.new("RGB", (size, size), (LETTERBOX_FILL,) * 3)
        square.paste(img, (where.left, where.top))
        return square
    left, top = -where.left, -where.top
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """RGB image -> float32 HxWx3 normalized as configured."""
    import numpy as np

    pixels = np.asarray(img, dtype=np.float32)
    if spec.channel_order == "bgr":
        pixels = pixels[..., ::-1]
    mean, std = spec.normalization()
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_file(path: Path, size: int, spec: Preprocessing) -> np.ndarray:
    return to_array(resize(load_rgb(path), size, spec), spec)


@dataclass
class Batch:
    """Preprocessed pixels of the images that decoded, and which ones did not."""

    pixels: np.ndarray | None
    kept: list[int]  # positions (in the requested paths) present in pixels
    skipped: list[tuple[Path, str]]  # (file, reason) of images left out


def load_batch(
    paths: Sequence[Path],
    size: int,
    spec: Preprocessing,
    pool: ThreadPoolExecutor | None = None,
    skip_corrupt: bool = False,
) -> Batch:
    """Preprocess ``paths`` into one float32 batch (N, size, size, 3). PIL decodes outside
    the GIL, so a thread pool uses every core. An undecodable image raises InputDataError,
    or with ``skip_corrupt`` is left out and reported."""
    import numpy as np

    def one(path: Path) -> np.ndarray | InputDataError:
        try:
            return preprocess_file(path, size, spec)
        except InputDataError as exc:
            if not skip_corrupt:
                raise
            return exc

    results = list(pool.map(one, paths) if pool else map(one, paths))
    kept = [i for i, r in enumerate(results) if not isinstance(r, InputDataError)]
    skipped = [(paths[i], r.message) for i, r in enumerate(results) if isinstance(r, InputDataError)]
    pixels = np.stack([r for r in results if not isinstance(r, InputDataError)]) if kept else None
    return Batch(pixels, kept, skipped)


def usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset, not the host's count): the
    number of decoding threads, and of TFLite's and the report's stated threads."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def iter_batches(
    paths: Sequence[Path], batch_size: int, size: int, spec: Preprocessing, skip_corrupt: bool = False
) -> Iterator[tuple[int, Batch]]:
    """Yield (start index, batch) over ``paths``: at most two batches in memory, the next
    one decoded (on every core) while the caller works on the current one."""
    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(max_workers=usable_cpus()) as decode, ThreadPoolExecutor(max_workers=1) as ahead:

        def submit(start: int) -> Future[Batch]:
            return ahead.submit(load_batch, paths[start : start + batch_size], size, spec, decode, skip_corrupt)

        if not starts:
            return
        pending = submit(starts[0])
        for i, start in enumerate(starts):
            batch = pending.result()
            if i + 1 < len(starts):
                pending = submit(starts[i + 1])
            yield start, batch
