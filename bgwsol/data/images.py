"""Reading an image, the one way every entry point does: the ETL, the crawler, the training
loader, ``bgwsol localize`` and ``bgwsol serve``; and ImageNet's normalization statistics.

Conventions (docs/faults.md, "Bad inputs tried", shows each on a generated corpus):

* **EXIF orientation is applied** (``ImageOps.exif_transpose``): an image is what a photo
  viewer, a browser or an annotation tool shows, so a box drawn on the displayed photo lands
  on the object, and "width" and "height" are the displayed ones. The ETL re-encodes without
  EXIF, so shards hold upright pixels.
* **Any mode becomes RGB**: grayscale and CMYK converted, 16-bit scaled by its maximum,
  alpha and palette transparency composited over white.
* **An animated image is read as its first frame.**
* **Refused** (:class:`RejectedImage`, with the reason): empty, truncated or undecodable
  data, and images over :data:`MAX_PIXELS` (decompression bombs).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MAX_PIXELS = 200_000_000  # ~200 MP, well above any photo; PIL refuses twice this outright and warns above it
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class RejectedImage(ValueError):
    """Data that is not an image bgwsol uses (empty, truncated, undecodable, too large); the
    message is the reason. ``about_mask``: the sample's ground-truth mask is at fault, not its image."""

    def __init__(self, reason: str, about_mask: bool = False):
        super().__init__(reason)
        self.about_mask = about_mask


def target_size(size: tuple[int, int], max_short_side: int) -> tuple[int, int]:
    """``(w, h)`` scaled so the shorter side is at most ``max_short_side`` (never enlarged)."""
    w, h = size
    s = min(1.0, max_short_side / min(w, h)) if max_short_side > 0 else 1.0
    return max(1, round(w * s)), max(1, round(h * s))


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB view of any PIL mode: grayscale and CMYK converted, 16-bit scaled by its maximum,
    alpha (and palette transparency) composited over white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() or 1.0
        im = Image.fromarray((np.clip(arr, 0, None) * (255.0 / top)).astype(np.uint8))
    return im.convert("RGB")


def decode_rgb(data: bytes, max_short_side: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``data`` fully to an upright RGB image; returns ``(image, (w, h))``, the size as
    displayed (EXIF orientation applied) at full resolution.

    JPEGs are decoded at a reduced DCT scale when that still leaves at least
    ``max_short_side`` pixels (``Image.draft``), several times faster on large photos; the
    returned image may then be smaller than ``(w, h)``. Raises :class:`RejectedImage`.
    """
    if not data:
        raise RejectedImage("empty file")
    try:
        im = Image.open(io.BytesIO(data))
        stored = im.size
        if stored[0] < 1 or stored[1] < 1:
            raise RejectedImage(f"image has size {stored}")
        if stored[0] * stored[1] > MAX_PIXELS:  # PIL only warns up to twice its limit
            raise RejectedImage(f"{stored[0]}x{stored[1]} px is over {MAX_PIXELS:,} pixels, refused as a "
                                f"decompression bomb")
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        if im.format == "JPEG" and max_short_side > 0:
            im.draft(im.mode if im.mode in ("RGB", "L") else None, target_size(stored, max_short_side))
        im.load()
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
    except RejectedImage:
        raise
    except Image.DecompressionBombError:
        raise RejectedImage(f"over {MAX_PIXELS:,} pixels, refused as a decompression bomb") from None
    except UnidentifiedImageError:
        raise RejectedImage("cannot decode: not an image format PIL reads") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise RejectedImage(f"cannot decode: {exc}") from None
    size = (stored[1], stored[0]) if orientation in _ROTATED else stored
    return to_rgb(im), size


def read_image_file(path) -> Image.Image:
    """The upright RGB image in the file at ``path`` (:func:`decode_rgb`'s conventions)."""
    from pathlib import Path

    image, _ = decode_rgb(Path(path).read_bytes())
    return image
