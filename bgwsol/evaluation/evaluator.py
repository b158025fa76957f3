"""Model outputs -> score maps at the evaluation resolution -> metric accumulators."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from bgwsol.evaluation.boxes import resize_boxes
from bgwsol.config import EvalConfig
from bgwsol.methods.base import Method, minmax
from bgwsol.precision import InferencePrecision, inference_precision
from bgwsol.evaluation.metrics import BoxAccumulator, ClassificationAccumulator, PxAPAccumulator, cam_thresholds, mean_over


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, size, size)`` bicubic, re-normalized to [0, 1] (bicubic overshoots)."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    return minmax(up).clamp_(0, 1)


@dataclass
class SplitEvaluation:
    """Accumulated evaluation of one split; mergeable across workers."""

    boxes: BoxAccumulator
    cls: ClassificationAccumulator = field(default_factory=ClassificationAccumulator)
    pxap: PxAPAccumulator | None = None

    def merge(self, other: "SplitEvaluation") -> "SplitEvaluation":
        self.boxes.merge(other.boxes)
        self.cls.merge(other.cls)
        if self.pxap is not None and other.pxap is not None:
            self.pxap.merge(other.pxap)
        else:  # PxAP needs a mask for every image of the split
            self.pxap = None
        return self

    def summary(self, taus: dict[int, float] | None = None, mask_tau: float | None = None) -> dict[str, float]:
        """Metrics in percent. ``taus`` (per IoU, e.g. chosen on validation) sets the operating
        thresholds and ``mask_tau`` the mask threshold; without them the split's own best are used."""
        own = self.boxes.best_thresholds()
        taus = taus or own
        max_acc = self.boxes.max_box_acc()
        at = self.boxes.accuracy_at(taus)
        out = {f"maxboxacc_iou{k}": v for k, v in max_acc.items()}
        out["maxboxacc_v2"] = mean_over(max_acc, self.boxes.iou_thresholds)
        out["boxacc_v2_at_tau"] = mean_over(at, self.boxes.iou_thresholds)
        out.update(self.boxes.loc_at(taus[50] if 50 in taus else next(iter(taus.values()))))
        out.update(self.cls.compute())
        if self.pxap is not None:
            out["pxap"] = self.pxap.compute()
            out["mask_miou"] = self.pxap.mask_miou_at(self.pxap.best_mask_threshold() if mask_tau is None else mask_tau)
        out["num_images"] = float(self.boxes.count)
        return {k: float(v) for k, v in out.items()}  # plain floats: numpy scalars print as np.float64(...)


def new_evaluation(cfg: EvalConfig, with_masks: bool) -> SplitEvaluation:
    thr = cam_thresholds(cfg.cam_curve_interval)
    return SplitEvaluation(BoxAccumulator(thr, cfg.iou_thresholds, cfg.multi_contour),
                           pxap=PxAPAccumulator(thr) if with_masks else None)


def batch_targets(batch: dict, size: int):
    """Per image of an :class:`~bgwsol.data.loader.EvalStream` batch: ``(image_id, gt boxes at
    size x size, bool mask or None)``; boxes are mapped with wsolevaluation's truncation."""
    for key, boxes, wh, mask in zip(batch["key"], batch["boxes"], batch["size"], batch["mask"]):
        if mask is not None:
            m = torch.as_tensor(mask)
            if tuple(m.shape) != (size, size):
                m = F.interpolate(m[None, None].float(), size=(size, size), mode="nearest")[0, 0]
            mask = m.numpy() > 127
        yield key, resize_boxes(np.asarray(boxes), tuple(wh), (size, size)), mask


@torch.no_grad()
def evaluate(model: torch.nn.Module, methods: dict[str, Method], loader: Iterable[dict], cfg: EvalConfig,
             device: torch.device | str = "cpu", preprocess=None, overlap: bool | None = None,
             precision: InferencePrecision | None = None) -> dict[str, SplitEvaluation]:
    """Score every image of a split under each named map variant (``methods``).

    The map for each image uses its ground-truth class (GT-known, as wsolevaluation);
    top-1/top-5 hits from the logits feed Top-k Loc. PxAP is kept only if every image has a
    mask. The model runs in ``precision``, by default ``cfg.precision`` on ``device``
    (:mod:`bgwsol.precision`; made channels_last in place). ``preprocess`` maps the batch's images on ``device`` before the model (e.g.
    :func:`bgwsol.data.loader.normalize` for uint8 shard batches). Returns one evaluation per variant.

    ``overlap``: the box search of a batch (CPU, numba without the GIL) runs in one helper
    thread while the model computes the next batch's maps; batches are scored in loader order,
    so the numbers are those of ``overlap=False``. By default on when the model runs on a GPU
    (the CPU then idles while the GPU computes); off on CPU, where the model and the search
    share the same cores (``benchmarks/bench_eval_overlap.py`` measures both).
    """
    if overlap is None:
        overlap = torch.device(device).type == "cuda"
    precision = precision or inference_precision(device, cfg.precision)
    precision.prepare(model)
    evals = {name: new_evaluation(cfg, True) for name in methods}
    size = cfg.scoremap_size
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="box-search") as scorer:
        pending: deque = deque()
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            if preprocess is not None:
                images = preprocess(images)
            labels = torch.as_tensor(batch["label"], device=device)
            outputs = precision.forward(model, images)
            scored = (evals, batch, size, outputs["logits"].float().cpu().numpy(), labels.cpu().numpy(),
                      {name: upsample_maps(m.scoremaps(outputs, labels), size).cpu().numpy()
                       for name, m in methods.items()})
            if not overlap:
                _score_batch(*scored)
                continue
            pending.append(scorer.submit(_score_batch, *scored))
            while len(pending) > 1:  # at most one batch waits: memory stays at two batches of maps
                pending.popleft().result()
        for future in pending:
            future.result()
    return evals


def _score_batch(evals: dict[str, SplitEvaluation], batch: dict, size: int, logits: np.ndarray, labels: np.ndarray,
                 maps: dict[str, np.ndarray]) -> None:
    """Add one batch to every variant's accumulators: ``logits`` ``(B, K)``, ``labels`` ``(B,)``,
    ``maps[variant]`` ``(B, size, size)`` in [0, 1]."""
    hits = {name: ev.cls.accumulate(logits, labels) for name, ev in evals.items()}
    for j, (image_id, gt, mask) in enumerate(batch_targets(batch, size)):
        for name, ev in evals.items():
            hit1, hit5 = hits[name]
            ev.boxes.accumulate(maps[name][j], gt, image_id=image_id, top1_correct=bool(hit1[j]),
                                top5_correct=bool(hit5[j]), label=int(labels[j]))
            if mask is None:
                ev.pxap = None
            elif ev.pxap is not None:
                ev.pxap.accumulate(maps[name][j], mask, image_id=image_id)


@torch.no_grad()
def overlay_grid(model: torch.nn.Module, methods: dict[str, Method], batch: dict, size: int, tau: float,
                 device: torch.device | str = "cpu", preprocess=None, count: int = 8, precision: str = "fp32"):
    """A picture of the first ``count`` images of an evaluation batch: one row per map variant
    in ``methods`` (heatmap, predicted boxes at ``tau`` in red, ground truth in green); the model
    runs in ``precision`` (as :func:`evaluate` does)."""
    from bgwsol.evaluation.scoremaps import boxes_at_threshold
    from bgwsol.evaluation.viz import grid, overlay

    run = inference_precision(device, precision)
    run.prepare(model)
    images = batch["image"][:count].to(device)
    labels = torch.as_tensor(batch["label"][:count], device=device)
    outputs = run.forward(model, preprocess(images) if preprocess is not None else images.float())
    pixels = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    pixels = pixels.clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    sub = {k: (v[:count] if isinstance(v, list) else v) for k, v in batch.items()}
    targets = list(batch_targets(sub, size))
    tiles = []
    for m in methods.values():
        maps = upsample_maps(m.scoremaps(outputs, labels), size).cpu().numpy()
        for j, (_id, gt, _mask) in enumerate(targets):
            tiles.append(overlay(pixels[j], maps[j], boxes_at_threshold(maps[j], tau), gt))
    return grid(tiles, columns=len(targets))
