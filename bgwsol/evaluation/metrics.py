"""WSOL metrics as accumulate / merge / compute objects with summable state.

Definitions follow wsolevaluation (Choe et al., CVPR 2020):

* **MaxBoxAcc@IoU** -- over score-map thresholds ``tau`` in ``arange(0, 1, interval)``, the
  best percentage of images whose best predicted box reaches the IoU threshold with some
  ground-truth box. *MaxBoxAccV2* averages it over IoU 30/50/70 with all contours; the
  original MaxBoxAcc is IoU 50 with the largest contour.
* **GT-known Loc / Top-1 Loc / Top-5 Loc** -- at one operating threshold, the percentage of
  images localized at IoU >= 0.5 (and, for Top-k, whose class is among the top k).
* **PxAP** -- area under the pixel precision-recall curve, from histograms of map values on
  ground-truth foreground and background pixels.

Every accumulator holds only counts or histograms, so Ray workers accumulate their shard
and the driver sums them with :meth:`merge`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bgwsol.evaluation.scoremaps import best_iou_per_threshold, check_scoremap

DEFAULT_IOU_THRESHOLDS: tuple[int, ...] = (30, 50, 70)


def cam_thresholds(interval: float) -> np.ndarray:
    """``np.arange(0, 1, interval)``: the threshold grid wsolevaluation sweeps."""
    if not 0 < interval < 1:
        raise ValueError(f"cam curve interval must be in (0, 1), got {interval}")
    return np.arange(0, 1, interval)


@dataclass
class BoxAccumulator:
    """Counts of correctly localized images per (IoU threshold, map threshold).

    ``correct[i, t]`` counts images whose best IoU at map threshold ``t`` reaches
    ``iou_thresholds[i]``; ``top1`` and ``top5`` count the same images among those whose
    class is right (top-1 / top-5). ``count`` is the number of images.
    """

    thresholds: np.ndarray
    iou_thresholds: tuple[int, ...] = DEFAULT_IOU_THRESHOLDS
    multi_contour: bool = True
    correct: np.ndarray = field(init=False)
    top1: np.ndarray = field(init=False)
    top5: np.ndarray = field(init=False)
    count: int = 0
    class_count: dict[int, int] = field(default_factory=dict)        # images per class (given a label)
    class_top1: dict[int, np.ndarray] = field(default_factory=dict)  # (I, T) top-1 hits per class

    def __post_init__(self) -> None:
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        self.iou_thresholds = tuple(int(t) for t in self.iou_thresholds)
        shape = (len(self.iou_thresholds), len(self.thresholds))
        self.correct = np.zeros(shape, dtype=np.int64)
        self.top1 = np.zeros(shape, dtype=np.int64)
        self.top5 = np.zeros(shape, dtype=np.int64)

    def accumulate(
        self,
        scoremap: np.ndarray,
        gt_boxes: np.ndarray,
        *,
        image_id: str | None = None,
        top1_correct: bool = True,
        top5_correct: bool = True,
        label: int | None = None,
    ) -> np.ndarray:
        """Add one image. ``scoremap`` ``(H, W)`` in [0, 1]; ``gt_boxes`` ``(G, 4)`` in map pixels;
        ``label`` (its class index) also counts it per class (:meth:`top1_loc_per_class`).

        Returns the ``(T,)`` best IoU per map threshold (useful for per-image reports).
        """
        check_scoremap(scoremap, image_id)
        best = best_iou_per_threshold(scoremap, np.asarray(gt_boxes), self.thresholds, self.multi_contour)
        hits = best[None, :] >= (np.asarray(self.iou_thresholds)[:, None] / 100.0)
        self.correct += hits
        if top1_correct:
            self.top1 += hits
        if top5_correct:
            self.top5 += hits
        self.count += 1
        if label is not None:
            label = int(label)
            self.class_count[label] = self.class_count.get(label, 0) + 1
            if label not in self.class_top1:
                self.class_top1[label] = np.zeros(hits.shape, dtype=np.int32)
            if top1_correct:
                self.class_top1[label] = self.class_top1[label] + hits
        return best

    def merge(self, other: "BoxAccumulator") -> "BoxAccumulator":
        """Add another accumulator's counts (same thresholds and mode) into this one."""
        if not (
            np.array_equal(self.thresholds, other.thresholds)
            and self.iou_thresholds == other.iou_thresholds
            and self.multi_contour == other.multi_contour
        ):
            raise ValueError("cannot merge box accumulators with different thresholds or contour mode")
        # new arrays, not in place: an accumulator that came through Ray's object store is read-only
        self.correct = self.correct + other.correct
        self.top1 = self.top1 + other.top1
        self.top5 = self.top5 + other.top5
        self.count += other.count
        for label, n in other.class_count.items():
            self.class_count[label] = self.class_count.get(label, 0) + n
            mine = self.class_top1.get(label)
            self.class_top1[label] = other.class_top1[label] if mine is None else mine + other.class_top1[label]
        return self

    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError("no images were accumulated")

    def curves(self) -> np.ndarray:
        """``(I, T)`` box accuracy in percent per IoU threshold and map threshold."""
        self._require_data()
        return self.correct * 100.0 / self.count

    def max_box_acc(self) -> dict[int, float]:
        """MaxBoxAcc per IoU threshold, in percent."""
        return {iou: float(c.max()) for iou, c in zip(self.iou_thresholds, self.curves())}

    def best_threshold(self, iou: int = 50) -> float:
        """The map threshold that maximizes box accuracy at ``iou`` (first one on ties)."""
        row = self.iou_thresholds.index(iou)
        return float(self.thresholds[int(np.argmax(self.curves()[row]))])

    def best_thresholds(self) -> dict[int, float]:
        """Best map threshold per IoU threshold."""
        return {iou: self.best_threshold(iou) for iou in self.iou_thresholds}

    def _index_of(self, tau: float) -> int:
        idx = int(np.argmin(np.abs(self.thresholds - tau)))
        if abs(self.thresholds[idx] - tau) > 1e-9:
            raise ValueError(f"threshold {tau} is not on this accumulator's grid")
        return idx

    def accuracy_at(self, taus: dict[int, float]) -> dict[int, float]:
        """Box accuracy per IoU threshold at given map thresholds (e.g. chosen on validation)."""
        curves = self.curves()
        return {iou: float(curves[self.iou_thresholds.index(iou), self._index_of(tau)]) for iou, tau in taus.items()}

    def top1_loc_per_class(self, tau: float, iou: int = 50) -> dict[int, float]:
        """Top-1 Loc (percent) of each class at the operating threshold ``tau``; only images
        accumulated with a ``label`` count."""
        row, col = self.iou_thresholds.index(iou), self._index_of(tau)
        return {label: float(self.class_top1[label][row, col] * 100.0 / n)
                for label, n in sorted(self.class_count.items())}

    def loc_at(self, tau: float, iou: int = 50) -> dict[str, float]:
        """GT-known, Top-1 and Top-5 Loc (percent) at one operating threshold ``tau``."""
        self._require_data()
        row, col = self.iou_thresholds.index(iou), self._index_of(tau)
        return {
            "gt_known_loc": self.correct[row, col] * 100.0 / self.count,
            "top1_loc": self.top1[row, col] * 100.0 / self.count,
            "top5_loc": self.top5[row, col] * 100.0 / self.count,
        }


@dataclass
class PxAPAccumulator:
    """Histograms of map values on ground-truth foreground and background pixels.

    Bins follow wsolevaluation: right edges ``[*thresholds, 1, 2, 3]``, so a value of exactly
    1.0 falls in its own bin. PxAP is the area under the precision-recall curve, in percent.
    Beside it, per image and threshold, the IoU of the predicted mask with the true one: mask
    mIoU, the weakly supervised segmentation figure (BAS, ESOL, MARS), at a threshold chosen on
    validation (:meth:`best_mask_threshold`).
    """

    thresholds: np.ndarray
    fg_hist: np.ndarray = field(init=False)
    bg_hist: np.ndarray = field(init=False)
    iou_sum: np.ndarray = field(init=False)  # (T,) per threshold: the images' mask IoUs added up
    images: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        self._edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.fg_hist = np.zeros(len(self._edges) - 1, dtype=np.float64)
        self.bg_hist = np.zeros(len(self._edges) - 1, dtype=np.float64)
        self.iou_sum = np.zeros(len(self.thresholds), dtype=np.float64)

    def accumulate(self, scoremap: np.ndarray, gt_mask: np.ndarray, *, ignore: np.ndarray | None = None,
                   image_id: str | None = None) -> None:
        """Add one image: ``scoremap`` ``(H, W)`` in [0, 1], ``gt_mask`` ``(H, W)`` bool; ``ignore`` excludes pixels."""
        check_scoremap(scoremap, image_id)
        gt_mask = np.asarray(gt_mask, dtype=bool)
        if gt_mask.shape != scoremap.shape:
            raise ValueError(f"mask shape {gt_mask.shape} != score map shape {scoremap.shape} (image {image_id!r})")
        keep = np.ones_like(gt_mask) if ignore is None else ~np.asarray(ignore, dtype=bool)
        fg = np.histogram(scoremap[gt_mask & keep], bins=self._edges)[0]
        bg = np.histogram(scoremap[~gt_mask & keep], bins=self._edges)[0]
        self.fg_hist += fg
        self.bg_hist += bg
        # this image's mask {map >= t} against the truth, at every threshold t: pixels at or above bin i
        tp = fg[::-1].cumsum()[::-1][:len(self.thresholds)].astype(np.float64)
        fp = bg[::-1].cumsum()[::-1][:len(self.thresholds)].astype(np.float64)
        union = fg.sum() + fp  # tp + fp + fn
        self.iou_sum += np.divide(tp, union, out=np.ones_like(tp), where=union > 0)
        self.images += 1

    def merge(self, other: "PxAPAccumulator") -> "PxAPAccumulator":
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge PxAP accumulators with different thresholds")
        self.fg_hist = self.fg_hist + other.fg_hist  # not in place: see BoxAccumulator.merge
        self.bg_hist = self.bg_hist + other.bg_hist
        self.iou_sum = self.iou_sum + other.iou_sum
        self.images += other.images
        return self

    def mask_miou(self) -> np.ndarray:
        """``(T,)`` mean over images of the IoU of the mask ``{map >= t}`` with the true mask, in
        percent, at each threshold ``t`` (an image with neither true nor predicted pixels counts 1)."""
        if not self.images:
            raise ValueError("no image accumulated")
        return self.iou_sum / self.images * 100

    def best_mask_threshold(self) -> float:
        """The threshold of the highest mean mask IoU (chosen on validation, then used on test)."""
        return float(self.thresholds[int(np.argmax(self.mask_miou()))])

    def mask_miou_at(self, tau: float) -> float:
        """Mean mask IoU (percent) at the accumulator's threshold nearest ``tau``."""
        return float(self.mask_miou()[int(np.argmin(np.abs(self.thresholds - tau)))])

    def compute(self) -> float:
        """PxAP in percent. Raises if there is no positive ground truth or no positive prediction."""
        tp = self.fg_hist[::-1].cumsum()
        fp = self.bg_hist[::-1].cumsum()
        fn = self.fg_hist.sum() - tp
        if ((tp + fn) <= 0).all():
            raise ValueError("no foreground pixel in the ground-truth masks")
        if ((tp + fp) <= 0).all():
            raise ValueError("no positive prediction in the score maps")
        predicted = (tp + fp) != 0
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=predicted)
        recall = tp / (tp + fn)
        return float((precision[1:] * np.diff(recall))[predicted[1:]].sum() * 100)


@dataclass
class ClassificationAccumulator:
    """Top-1 / top-5 classification counts."""

    top1: int = 0
    top5: int = 0
    count: int = 0

    def accumulate(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add a batch: ``logits`` ``(B, K)``, ``labels`` ``(B,)``. Returns per-image top-1/top-5 hits ``(B,)`` bool."""
        logits = np.asarray(logits)
        labels = np.asarray(labels).reshape(-1, 1)
        k = min(5, logits.shape[1])
        topk = np.argsort(-logits, axis=1)[:, :k]
        hit1 = topk[:, 0] == labels[:, 0]
        hit5 = (topk == labels).any(axis=1)
        self.top1 += int(hit1.sum())
        self.top5 += int(hit5.sum())
        self.count += len(labels)
        return hit1, hit5

    def merge(self, other: "ClassificationAccumulator") -> "ClassificationAccumulator":
        self.top1 += other.top1
        self.top5 += other.top5
        self.count += other.count
        return self

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no images were accumulated")
        return {"top1_cls": self.top1 * 100.0 / self.count, "top5_cls": self.top5 * 100.0 / self.count}


def mean_over(values: dict[int, float], keys: Sequence[int] = DEFAULT_IOU_THRESHOLDS) -> float:
    """Mean of per-IoU values over ``keys`` (MaxBoxAccV2 is the mean over 30/50/70)."""
    return float(np.mean([values[k] for k in keys]))
