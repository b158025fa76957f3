"""The bad-input corpus, generated (nothing binary is committed): what every entry point meets in
tests/test_bad_inputs.py, and what docs/faults.md's "Bad inputs tried" table lists.

Each image comes with what bgwsol must do with it: ``"used"`` (with the convention stated in
bgwsol/data/images.py) or ``"rejected"`` (one line naming the file and the reason, counted).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# the object of the EXIF-rotated photo: a red square at these corners of the photo as displayed
EXIF_OBJECT_BOX = (60, 20, 99, 59)  # inclusive x0, y0, x1, y1 in the displayed 160 x 120 photo
EXIF_DISPLAYED_SIZE = (160, 120)


def _photo(size=(96, 80), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(width: int = 25_000, height: int = 25_000) -> bytes:
    """A PNG that claims ``width`` x ``height`` 1-bit pixels in a few hundred bytes (its image
    data is a short run of zeros: a reader must refuse it from its header)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + width // 8) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def exif_rotated_photo() -> bytes:
    """A JPEG stored on its side with EXIF orientation 6 (rotate 90° clockwise to view): the
    displayed photo is :data:`EXIF_DISPLAYED_SIZE` with a red square at :data:`EXIF_OBJECT_BOX`
    on grey, as a person (and an annotation tool) sees it."""
    shown = Image.new("RGB", EXIF_DISPLAYED_SIZE, (128, 128, 128))
    x0, y0, x1, y1 = EXIF_OBJECT_BOX
    shown.paste((220, 20, 20), (x0, y0, x1 + 1, y1 + 1))
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote; orientation 6 undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    return _bytes(stored, "JPEG", quality=95, exif=exif.tobytes())


def images() -> dict[str, tuple[str, bytes, str]]:
    """``{name: (file name, bytes, "used" | "rejected")}``."""
    good = _bytes(_photo(), "JPEG", quality=90)
    cmyk = _bytes(_photo(seed=1).convert("CMYK"), "JPEG")
    gray16 = Image.fromarray((np.arange(80 * 96, dtype=np.uint16).reshape(80, 96) * 8).astype(np.uint16))
    gray_alpha = _photo(seed=2).convert("LA")
    palette = _photo(seed=3).convert("P")
    palette.info["transparency"] = 0
    frames = [_photo(seed=4).convert("P"), _photo(seed=5).convert("P")]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "decompression bomb": ("bomb.png", decompression_bomb(), "rejected"),
        "truncated JPEG": ("truncated.jpg", good[: len(good) // 2], "rejected"),
        "zero-byte file": ("empty.jpg", b"", "rejected"),
        "not an image": ("random.jpg", np.random.default_rng(7).integers(0, 256, 100, dtype=np.uint8).tobytes(),
                         "rejected"),
        "CMYK JPEG": ("cmyk.jpg", cmyk, "used"),
        "16-bit PNG": ("gray16.png", _bytes(gray16, "PNG"), "used"),
        "grayscale with alpha": ("gray_alpha.png", _bytes(gray_alpha, "PNG"), "used"),
        "palette with transparency": ("palette.png", _bytes(palette, "PNG", transparency=0), "used"),
        "animated GIF": ("animated.gif", animated.getvalue(), "used"),
        "EXIF-rotated JPEG": ("exif_rotated.jpg", exif_rotated_photo(), "used"),
        "1 x 1 px": ("one_pixel.png", _bytes(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "used"),
        "20,000 x 100 px": ("wide.jpg", _bytes(Image.new("RGB", (20_000, 100), (30, 90, 150)), "JPEG"), "used"),
    }


def write_images(folder: Path) -> dict[str, Path]:
    """Every corpus image in ``folder``; returns ``{name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (file_name, data, _) in images().items():
        paths[name] = folder / file_name
        paths[name].write_bytes(data)
    return paths


def rejected() -> set[str]:
    return {name for name, (_, _, outcome) in images().items() if outcome == "rejected"}


def score_maps() -> dict[str, np.ndarray]:
    """Score maps that break ``bgwsol-eval``'s contract (2-D float in [0, 1])."""
    nan = np.full((8, 8), 0.5, np.float32)
    nan[2, 3] = np.nan
    return {"NaN": nan, "wrong shape": np.zeros((3, 8, 8), np.float32),
            "outside [0, 1]": np.linspace(-0.5, 1.5, 64, dtype=np.float32).reshape(8, 8)}
