"""Boxes in one convention: integer pixel corners ``(x0, y0, x1, y1)``, both inclusive.

wsolevaluation's convention, which every metric here follows: a box covers pixels
``x0..x1`` and ``y0..y1`` *inclusive*, so its area is ``(x1 - x0 + 1) * (y1 - y0 + 1)``
(the "+1 pixel" IoU). Arrays of boxes have shape ``(N, 4)`` and dtype int64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def as_boxes(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Return ``boxes`` as an ``(N, 4)`` int64 array, checking ``x0 <= x1`` and ``y0 <= y1``.

    Raises ValueError naming the first offending box: a silent swap of corners would turn a
    wrong annotation into a plausible number.
    """
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"box {arr[i].tolist()} is not in x0y0x1y1 convention (x1 < x0 or y1 < y0)")
    return arr.astype(np.int64)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, ``(Na, 4) x (Nb, 4) -> (Na, Nb)`` float64, with the +1 pixel convention.

    A pair whose union is not positive (degenerate boxes) has IoU 0, as in wsolevaluation.
    """
    a = np.asarray(boxes_a, dtype=np.int64).reshape(-1, 1, 4)
    b = np.asarray(boxes_b, dtype=np.int64).reshape(1, -1, 4)
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    ious = inter / np.where(degenerate, 1, union)
    ious[degenerate] = 0.0
    return ious


def resize_boxes(boxes: np.ndarray, image_size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Rescale boxes from an image of ``(width, height)`` to ``(new_width, new_height)``.

    Coordinates are scaled as floats and truncated with ``int`` (wsolevaluation's
    ``resize_bbox``), so results match published tables bit for bit.
    """
    boxes = as_boxes(boxes).astype(np.float64)
    w, h = map(float, image_size)
    nw, nh = map(float, new_size)
    scale = np.array([nw / w, nh / h, nw / w, nh / h])
    return np.trunc(boxes * scale).astype(np.int64)
