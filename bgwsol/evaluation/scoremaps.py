"""Score maps to boxes, following wsolevaluation's conventions exactly.

A *score map* is a 2-D float array in ``[0, 1]`` (H x W), one per image. Boxes come from
the uint8 map ``u = (map * 255).astype(uint8)`` binarized as ``u > int(tau * u.max())``
(``cv2.threshold`` with ``THRESH_BINARY``), then from the contours of that binary image
(``cv2.findContours`` with ``RETR_TREE``): the largest contour by ``cv2.contourArea``, or
every contour (outer borders and hole borders). A contour's bounding rect ``(x, y, w, h)``
becomes the box ``(x, y, min(x + w, W - 1), min(y + h, H - 1))`` -- note ``x + w``, not
``x + w - 1``: that is wsolevaluation's convention and published numbers depend on it.

Two implementations give the same numbers:

* :func:`best_iou_per_threshold_reference` -- one ``findContours`` per threshold, as
  wsolevaluation does. Kept as the executable specification and the benchmark reference.
* :func:`best_iou_per_threshold` -- the fast path. On a uint8 map at most 256 distinct
  binarizations exist, so thresholds that give the same binary image share one
  computation; each binarization is traced only inside the bounding region of its
  foreground; bounding rects and contour areas are computed for all contours at once
  (``reduceat`` over the concatenated points) instead of one Python call per contour.
  With all contours, levels without holes need no tracing at all: one union-find pass
  (:mod:`bgwsol.evaluation.level_components`) gives every level's 8-connected components with their
  boxes -- exactly the outer contours -- and the Euler number tells which levels have
  holes; only those are traced.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from bgwsol.evaluation.boxes import iou_matrix
from bgwsol.evaluation.level_components import level_best_iou

_EMPTY_BOX = np.zeros((1, 4), dtype=np.int64)


class ScoremapError(ValueError):
    """A score map that breaks the contract (2-D, finite, in [0, 1])."""


def check_scoremap(scoremap: np.ndarray, image_id: str | None = None) -> None:
    """Raise :class:`ScoremapError` naming ``image_id`` unless ``scoremap`` is a valid map.

    Valid: a 2-D NumPy float array with no NaN/inf and every value in ``[0, 1]``.
    """
    where = f" for image {image_id!r}" if image_id is not None else ""
    if not isinstance(scoremap, np.ndarray):
        raise ScoremapError(f"score map{where} must be a numpy array, got {type(scoremap).__name__}")
    if scoremap.ndim != 2:
        raise ScoremapError(f"score map{where} must be 2-D (H x W), got shape {scoremap.shape}")
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise ScoremapError(f"score map{where} must be float, got dtype {scoremap.dtype}")
    if not np.isfinite(scoremap).all():
        raise ScoremapError(f"score map{where} contains NaN or inf")
    lo, hi = float(scoremap.min()), float(scoremap.max())
    if lo < 0.0 or hi > 1.0:
        raise ScoremapError(f"score map{where} must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")


def to_uint8(scoremap: np.ndarray) -> np.ndarray:
    """``(scoremap * 255).astype(uint8)`` in the map's own float precision (as wsolevaluation)."""
    return (scoremap * 255).astype(np.uint8)


def threshold_cuts(scoremap_u8: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Integer cut ``int(tau * max(u))`` per threshold: a pixel is foreground iff ``u > cut``."""
    peak = float(scoremap_u8.max())
    return (np.asarray(thresholds, dtype=np.float64) * peak).astype(np.int64)


def _rects_to_boxes(rects: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(N, 4)`` bounding rects ``(x, y, w, h)`` to wsolevaluation boxes (see module doc)."""
    x, y, w, h = (rects[:, i].astype(np.int64) for i in range(4))
    return np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)


def contour_boxes(binary: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Boxes of the contours of a 0/1 uint8 image by tracing them (``cv2.findContours``).

    Returns ``(N, 4)``: one box (the largest contour) or one per contour; ``[[0, 0, 0, 0]]``
    when the image has no foreground.
    """
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return _EMPTY_BOX
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)
    return _rects_to_boxes(rects, binary.shape[1], binary.shape[0])


def traced_boxes(binary: np.ndarray, multi_contour: bool, offset: tuple[int, int] = (0, 0),
                 full_size: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`contour_boxes` without a Python loop over contours.

    Bounding rects (and, for the largest contour, shoelace areas, which equal
    ``cv2.contourArea`` exactly on integer points) come from ``reduceat`` over the
    concatenated contour points. ``binary`` may be a crop of the full image holding all its
    foreground: ``offset`` ``(x, y)`` places it, ``full_size`` ``(width, height)`` is the full
    image's (for wsolevaluation's clipping of ``x + w`` to ``width - 1``).
    """
    width, height = full_size or (binary.shape[1], binary.shape[0])
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return _EMPTY_BOX
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if not multi_contour:
        x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
        nxt = np.arange(1, len(pts) + 1)
        nxt[starts + lengths - 1] = starts
        area = np.abs(np.add.reduceat(x * y[nxt] - y * x[nxt], starts))
        k = int(np.argmax(area))  # first of equals, as max() over the contour list
        pts, starts = pts[starts[k]:starts[k] + lengths[k]], np.zeros(1, dtype=np.int64)
    x0 = np.minimum.reduceat(pts[:, 0], starts) + offset[0]
    y0 = np.minimum.reduceat(pts[:, 1], starts) + offset[1]
    x1 = np.maximum.reduceat(pts[:, 0], starts) + 1 + offset[0]  # boundingRect x + w
    y1 = np.maximum.reduceat(pts[:, 1], starts) + 1 + offset[1]
    return np.stack([x0, y0, np.minimum(x1, width - 1), np.minimum(y1, height - 1)], axis=1)


def best_iou_per_threshold_reference(
    scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: Sequence[float], multi_contour: bool
) -> np.ndarray:
    """Best IoU with any ground-truth box at each threshold: ``(T,)`` float64.

    The straightforward algorithm, as wsolevaluation runs it: one ``cv2.threshold`` and one
    ``cv2.findContours`` per threshold, then one IoU matrix over all boxes of all thresholds.
    ``gt_boxes`` is ``(G, 4)`` in map pixels. Kept as the specification of the fast path.
    """
    u8 = to_uint8(scoremap)
    boxes_per_threshold = []
    for tau in thresholds:
        _, binary = cv2.threshold(u8, int(tau * np.max(u8)), 255, cv2.THRESH_BINARY)
        boxes_per_threshold.append(contour_boxes(binary, multi_contour))
    best_per_box = iou_matrix(np.concatenate(boxes_per_threshold), gt_boxes).max(axis=1)
    out, start = np.empty(len(boxes_per_threshold)), 0
    for i, boxes in enumerate(boxes_per_threshold):
        out[i] = best_per_box[start:start + len(boxes)].max()
        start += len(boxes)
    return out


def best_iou_per_threshold(
    scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: Sequence[float] | np.ndarray, multi_contour: bool
) -> np.ndarray:
    """Same result as :func:`best_iou_per_threshold_reference`, computed once per distinct binarization.

    Args:
        scoremap: ``(H, W)`` float map in [0, 1] (checked by the caller).
        gt_boxes: ``(G, 4)`` int boxes in map pixels, inclusive corners.
        thresholds: ``(T,)`` thresholds in [0, 1).
        multi_contour: all contours (MaxBoxAccV2) or only the largest one.

    Returns:
        ``(T,)`` float64: for each threshold, the max IoU over predicted x GT boxes.
    """
    u8 = to_uint8(scoremap)
    gt_boxes = np.asarray(gt_boxes)
    cuts = threshold_cuts(u8, thresholds)
    values = np.unique(u8)
    # u > cut selects the same pixels as u >= (smallest present value above cut), so each
    # threshold maps to the index of that value; len(values) means "no foreground".
    level_of = np.searchsorted(values, cuts, side="right")
    levels = np.unique(level_of)
    best_per_level = np.zeros(len(levels))
    height, width = u8.shape
    present = levels < len(values)
    if not present.all():  # no foreground: wsolevaluation's single box [0, 0, 0, 0]
        best_per_level[~present] = iou_matrix(_EMPTY_BOX, gt_boxes).max()
    level_values = values[levels[present]]
    traced = np.flatnonzero(present)
    if multi_contour and len(level_values):
        # all contours of every level come from two union-find sweeps: nothing left to trace
        want = np.zeros(257, dtype=np.bool_)
        want[level_values] = True
        _count, best = level_best_iou(u8, want, gt_boxes.astype(np.int64).reshape(-1, 4))
        best_per_level[present] = best[level_values]
        traced = traced[:0]
    row_peak, col_peak = u8.max(axis=1), u8.max(axis=0)
    for k in traced:
        v = values[levels[k]]
        # contours only need the foreground's bounding region: outside it all is 0, as beyond the image
        rows, cols = np.flatnonzero(row_peak >= v), np.flatnonzero(col_peak >= v)
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        binary = (u8[y0:y1, x0:x1] >= v).view(np.uint8)
        boxes = traced_boxes(binary, multi_contour, (int(x0), int(y0)), (width, height))
        best_per_level[k] = iou_matrix(boxes, gt_boxes).max()
    return best_per_level[np.searchsorted(levels, level_of)]


def boxes_at_threshold(scoremap: np.ndarray, tau: float, multi_contour: bool = False) -> np.ndarray:
    """Predicted boxes ``(N, 4)`` of one map at one operating threshold (for inference)."""
    u8 = to_uint8(scoremap)
    binary = (u8 > int(tau * float(u8.max()))).view(np.uint8)
    return traced_boxes(binary, multi_contour)
