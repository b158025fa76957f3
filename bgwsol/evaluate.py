"""Model outputs -> score maps at the evaluation resolution -> metric accumulators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bgwsol.boxes import resize_boxes
from bgwsol.config import EvalConfig
from bgwsol.data.records import Sample
from bgwsol.methods.registry import Method, minmax
from bgwsol.metrics import BoxAccumulator, ClassificationAccumulator, PxAPAccumulator, cam_thresholds, mean_over


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, size, size)`` bicubic, re-normalized to [0, 1] (bicubic overshoots)."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    return minmax(up).clamp_(0, 1)


def load_mask(path, size: int) -> np.ndarray:
    """Ground-truth mask PNG -> ``(size, size)`` bool (nearest-neighbour resize)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((size, size), Image.NEAREST)) > 127


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
        return self

    def summary(self, taus: dict[int, float] | None = None) -> dict[str, float]:
        """Metrics in percent. ``taus`` (per IoU, e.g. chosen on validation) sets the operating
        thresholds; without it the split's own best thresholds are used."""
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
        out["num_images"] = float(self.boxes.count)
        return out


def new_evaluation(cfg: EvalConfig, with_masks: bool) -> SplitEvaluation:
    thr = cam_thresholds(cfg.cam_curve_interval)
    return SplitEvaluation(BoxAccumulator(thr, cfg.iou_thresholds, cfg.multi_contour),
                           pxap=PxAPAccumulator(thr) if with_masks else None)


@torch.no_grad()
def evaluate(model: torch.nn.Module, methods: dict[str, Method], loader: Iterable[dict], samples: list[Sample],
             cfg: EvalConfig, device: torch.device | str = "cpu") -> dict[str, SplitEvaluation]:
    """Score every sample of a split under each named map variant (``methods``).

    The map for each image uses its ground-truth class (GT-known, as wsolevaluation);
    top-1/top-5 hits from the logits feed Top-k Loc. Returns one evaluation per variant.
    """
    model.eval()
    with_masks = all(s.mask_path is not None for s in samples)
    evals = {name: new_evaluation(cfg, with_masks) for name in methods}
    size = cfg.scoremap_size
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        labels = torch.as_tensor(batch["label"], device=device)
        outputs = model(images)
        logits = outputs["logits"].float().cpu().numpy()
        maps_np = {name: upsample_maps(m.scoremaps(outputs, labels), size).cpu().numpy() for name, m in methods.items()}
        for name, ev in evals.items():
            hit1, hit5 = ev.cls.accumulate(logits, labels.cpu().numpy())
            for j, idx in enumerate(np.asarray(batch["index"])):
                s = samples[int(idx)]
                gt = resize_boxes(s.boxes, s.size, (size, size))
                ev.boxes.accumulate(maps_np[name][j], gt, image_id=s.image_id,
                                    top1_correct=bool(hit1[j]), top5_correct=bool(hit5[j]))
                if ev.pxap is not None:
                    ev.pxap.accumulate(maps_np[name][j], load_mask(s.mask_path, size), image_id=s.image_id)
    return evals
