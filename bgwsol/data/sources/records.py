"""The record every reader returns: one image with its label, boxes and optional mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgwsol.errors import UserError


class DatasetFormatError(UserError, ValueError):
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
        problem: why this one sample cannot be used (``"<file>:<line>: <reason>"``), found by the
            reader; empty when fine. Such a sample goes to the rejects report, not into a split.
    """

    image_id: str
    path: Path | str
    label: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    size: tuple[int, int] = (0, 0)
    mask_path: Path | None = None
    source: str = ""
    license: str = ""
    problem: str = ""

    @property
    def is_background(self) -> bool:
        return self.label == BACKGROUND_LABEL


class InvalidBox(ValueError):
    """A box that no clipping can save: inverted, empty, or far outside its image."""


def edge_slack(side: int) -> float:
    """How far (pixels) a box may pass one image edge and still count as reaching it: 2 pixels
    or 2 % of the side, whichever is more. CUB's ``x + w`` and ILSVRC's ``xmax`` equal to the
    width are one pixel past the last column; annotators' clicks land a few pixels off."""
    return max(2.0, 0.02 * side)


def fit_boxes(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Clip inclusive corner boxes ``(N, 4)`` that reach past the edge of a ``(w, h)`` image.

    Returns ``(boxes clipped to [0, w-1] x [0, h-1] as int64, how many boxes were clipped)``.
    Raises :class:`InvalidBox` for an inverted or empty box (``x1 <= x0`` or ``y1 <= y0``) or
    one that passes an edge by more than :func:`edge_slack`.
    """
    w, h = size
    sx, sy = edge_slack(w), edge_slack(h)
    fitted, clipped = [], 0
    for box in np.asarray(boxes, dtype=np.int64).reshape(-1, 4).tolist():
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise InvalidBox(f"box {box} is {'inverted' if x1 < x0 or y1 < y0 else 'empty'}")
        fit = [min(max(x0, 0), w - 1), min(max(y0, 0), h - 1), min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)]
        # past an edge by more than the slack, or within it but wholly beyond the edge
        if x0 < -sx or y0 < -sy or x1 > w - 1 + sx or y1 > h - 1 + sy or fit[2] <= fit[0] or fit[3] <= fit[1]:
            raise InvalidBox(f"box {box} lies outside the {w}x{h} image")
        fitted.append(fit)
        clipped += int(fit != box)
    return np.array(fitted, dtype=np.int64).reshape(-1, 4), clipped
