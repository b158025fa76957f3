"""Decode, validate, shrink and re-encode one image, moving its boxes and mask with it.

The ETL's per-image work (and the plain-loop reference its benchmark compares against).
Boxes are ``(N, 4)`` inclusive pixel corners ``x0, y0, x1, y1``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from bgwsol.data.images import RejectedImage, decode_rgb, target_size
from bgwsol.data.sources.records import InvalidBox, fit_boxes

__all__ = ["ProcessedImage", "RejectedImage", "process_image", "scale_boxes"]


@dataclass(frozen=True)
class ProcessedImage:
    """A re-encoded image.

    Attributes:
        jpeg: the JPEG bytes (RGB, shorter side at most the configured size).
        size: ``(width, height)`` after resizing, pixels.
        orig_size: ``(width, height)`` of the decoded original, pixels.
        boxes: ``(N, 4)`` int64 inclusive corners in the resized image.
        mask_png: the ground-truth mask resized with the image (PNG, 0/255), or None.
        clipped_boxes: how many boxes reached past the original image's edge and were clipped.
    """

    jpeg: bytes
    size: tuple[int, int]
    orig_size: tuple[int, int]
    boxes: np.ndarray
    mask_png: bytes | None
    clipped_boxes: int = 0


def scale_boxes(boxes: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Map inclusive pixel boxes from an image of size ``src`` to one of size ``dst`` (both ``(w, h)``).

    A box covering pixels ``[x0, x1]`` covers ``[x0 * s, (x1 + 1) * s)`` after scaling by ``s``;
    the result is the pixels that interval touches, clipped to the image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    out = np.empty_like(boxes)
    out[:, 0] = np.floor(boxes[:, 0] * sx)
    out[:, 1] = np.floor(boxes[:, 1] * sy)
    out[:, 2] = np.ceil((boxes[:, 2] + 1) * sx - 1e-9) - 1
    out[:, 3] = np.ceil((boxes[:, 3] + 1) * sy - 1e-9) - 1
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, dst[0] - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, dst[1] - 1)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0])
    out[:, 3] = np.maximum(out[:, 3], out[:, 1])
    return out.astype(np.int64)


def object_pixels(mask: Image.Image) -> np.ndarray:
    """Bool (H, W): the object's pixels of a ground-truth mask. A 0/1 map: nonzero. A 0-255 map
    (CUB's soft masks: the share of annotators who marked the pixel; 0/255 binary maps): at
    least 128, a majority of CUB's annotators."""
    gray = np.asarray(mask.convert("L"))
    return gray > 0 if gray.max(initial=0) <= 1 else gray >= 128


def process_image(data: bytes, boxes: np.ndarray | None = None, *, max_short_side: int = 320,
                  jpeg_quality: int = 90, mask: bytes | None = None) -> ProcessedImage:
    """Decode ``data``, shrink it so the shorter side is at most ``max_short_side``, re-encode JPEG.

    ``boxes`` (inclusive corners in the original image) that reach past the edge are clipped
    (:func:`~bgwsol.data.sources.records.fit_boxes`); an inverted, empty or far-outside box raises
    RejectedImage.
    ``mask`` (PNG/any image bytes; :func:`object_pixels` says which pixels are the object) is
    stored as 0/255 and resized with nearest neighbour; one whose size is not the image's is rejected.
    """
    im, orig = decode_rgb(data, max_short_side)
    boxes = np.zeros((0, 4), np.int64) if boxes is None else np.asarray(boxes, np.int64).reshape(-1, 4)
    try:
        boxes, clipped = fit_boxes(boxes, orig)
    except InvalidBox as exc:
        raise RejectedImage(f"bad box: {exc}") from None
    size = target_size(orig, max_short_side)
    if im.size != size:
        im = im.resize(size, Image.BILINEAR, reducing_gap=None if im.size[0] < 2 * size[0] else 2.0)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=jpeg_quality)
    mask_png = None
    if mask is not None:
        try:
            m = Image.open(io.BytesIO(mask))
            m.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise RejectedImage(f"cannot decode the mask: {exc}", about_mask=True) from None
        if m.size != orig:
            raise RejectedImage(f"mask is {m.size[0]}x{m.size[1]} but the image is {orig[0]}x{orig[1]}",
                                about_mask=True)
        m = Image.fromarray(object_pixels(m).astype(np.uint8) * 255).resize(size, Image.NEAREST)
        mbuf = io.BytesIO()
        m.save(mbuf, format="PNG", optimize=False)
        mask_png = mbuf.getvalue()
    return ProcessedImage(buf.getvalue(), size, orig, scale_boxes(boxes, orig, size) if len(boxes) else boxes,
                          mask_png, clipped)

