"""The record every reader returns: one image with its label, boxes and optional mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetFormatError(ValueError):
    """A dataset file that breaks its format; the message names the file and line."""


BACKGROUND_LABEL = -1


@dataclass(frozen=True)
class Sample:
    """One image.

    Attributes:
        image_id: path relative to the dataset root (wsolevaluation's image id), e.g.
            ``"val/ILSVRC2012_val_00000001.JPEG"``.
        path: absolute path of the image file, or its ``s3://`` URL for a dataset in a bucket.
        label: class index in ``[0, K)``, or ``BACKGROUND_LABEL`` for a background image.
        boxes: ``(N, 4)`` int64 inclusive corners ``x0, y0, x1, y1`` in original pixels;
            empty ``(0, 4)`` when the split carries no boxes.
        size: ``(width, height)`` of the original image in pixels.
        mask_path: ground-truth foreground mask (PNG, nonzero = object), if any.
        source: where the sample came from (``"ilsvrc"``, ``"cub"``, ``"background"``, a URL).
        license: the image's license where known (crawled background images).
    """

    image_id: str
    path: Path | str
    label: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    size: tuple[int, int] = (0, 0)
    mask_path: Path | None = None
    source: str = ""
    license: str = ""

    @property
    def is_background(self) -> bool:
        return self.label == BACKGROUND_LABEL


def check_boxes_inside(boxes: np.ndarray, size: tuple[int, int], where: str) -> None:
    """Raise DatasetFormatError (naming ``where``) if a box leaves the image or is inverted."""
    w, h = size
    for box in np.asarray(boxes).reshape(-1, 4):
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise DatasetFormatError(f"{where}: box {[x0, y0, x1, y1]} has x1 < x0 or y1 < y0")
        if x0 < 0 or y0 < 0 or x1 >= w or y1 >= h:
            raise DatasetFormatError(f"{where}: box {[x0, y0, x1, y1]} lies outside the {w}x{h} image")
