"""Scoring a checkpoint: a checkpoint plus shard URLs -> numbers and pictures, in one place.

* :func:`map_variants`: the maps a checkpoint is scored under (its own, CAM alone and M alone for
  a foreground head, post-hoc maps such as Eigen-CAM);
* :func:`evaluate_part` / :func:`evaluate_checkpoint`: one rank's accumulators over its part of a
  split (validation during training, validation then test after it); :func:`merge_evaluations`
  and :func:`gather_evaluations` add the ranks' parts;
* :func:`summarize` -> :class:`FinalEvaluation`: every map variant chooses its thresholds on
  validation, and the test split is read once at them;
* pictures: :func:`overlay_batch` (the example images) and :func:`score_examples` (their maps,
  for a run's overlays and the report's example images).

A whole checkpoint is scored by :func:`score_here` (this process) or
:func:`bgwsol.evaluation.on_ray.score_on_workers` (the same, split over Ray tasks). Training only
produces checkpoints and never imports the final scoring (tests/test_layout.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from bgwsol.checkpoint import model_from_state
from bgwsol.config import EvalConfig
from bgwsol.data.plan import DataPlan, Worker
from bgwsol.evaluation.evaluator import SplitEvaluation, evaluate
from bgwsol.methods import Method, build_method

EVAL_BATCH = 64


def map_variants(method: Method, post_hoc: Iterable[str] = ()) -> dict[str, Method]:
    """The maps to score: the method's own (``main``); for a foreground head also CAM alone
    (``cam_only``) and M alone (``mask_only``); and each post-hoc method named (e.g. ``eigencam``
    on a CAM-trained model)."""
    variants = {"main": method}
    if method.needs_fg_head:
        for name, alpha in (("cam_only", 0.0), ("mask_only", 1.0)):
            variants[name] = build_method(dataclasses.replace(method.cfg, alpha=alpha))
    for name in post_hoc:
        variants[name] = build_method(dataclasses.replace(method.cfg, name=name))
    return variants


def merge_evaluations(parts: list[dict[str, SplitEvaluation]]) -> dict[str, SplitEvaluation]:
    """The ranks' evaluations (one dict of map variant -> accumulators per rank) added into one."""
    merged = parts[0]
    for part in parts[1:]:
        for name, ev in part.items():
            merged[name].merge(ev)
    return merged


def gather_evaluations(local: dict[str, SplitEvaluation]) -> dict[str, SplitEvaluation]:
    """Merge every rank's evaluations (torch.distributed object gather); all ranks get the sum.
    A no-op outside a process group of more than one rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return merge_evaluations(parts)


def eval_loader(urls: list[str], input_size: int, worker: Worker, counts: list[int] | None = None):
    """This rank's part of a split: every sample of ``urls`` exactly once across the ranks (cut by
    sample with ``counts``, the samples of each shard; else by shard)."""
    from torch.utils.data import DataLoader

    from bgwsol.data.loader import EvalStream, collate_eval

    stream = EvalStream(urls, input_size=input_size, rank=worker.rank, world_size=worker.world, counts=counts)
    return DataLoader(stream, batch_size=EVAL_BATCH, collate_fn=collate_eval, num_workers=worker.loader_workers)


def evaluate_part(model: torch.nn.Module, variants: dict[str, Method], urls: list[str], input_size: int,
                  eval_cfg: EvalConfig, worker: Worker, counts: list[int] | None = None
                  ) -> dict[str, SplitEvaluation]:
    """This rank's accumulators for each map variant over its part of ``urls`` (merge them with
    :func:`gather_evaluations` or ``SplitEvaluation.merge``)."""
    from bgwsol.data.loader import normalize

    return evaluate(model, variants, eval_loader(urls, input_size, worker, counts), eval_cfg, worker.device,
                    preprocess=normalize)


def overlay_batch(urls: list[str], input_size: int, count: int = 8) -> dict:
    """The first ``count`` images of a split's first shard (the same ones every time)."""
    from torch.utils.data import DataLoader

    from bgwsol.data.loader import EvalStream, collate_eval

    return next(iter(DataLoader(EvalStream(urls[:1], input_size=input_size), batch_size=count,
                                collate_fn=collate_eval)))


@dataclass
class FinalEvaluation:
    """A trained checkpoint scored once: per map variant the validation metrics at its own best
    thresholds, the thresholds chosen there (IoU percent -> τ), and the test metrics at them;
    for the report, per variant the test split's box accuracy curves (``{"thresholds": [T],
    "boxacc": {IoU: [T] percent}}``) and Top-1 Loc per class index at the validation τ (IoU 50)."""

    val: dict[str, dict[str, float]]
    taus: dict[str, dict[int, float]]
    test: dict[str, dict[str, float]]
    test_curves: dict[str, dict] = field(default_factory=dict)
    test_per_class: dict[str, dict[int, float]] = field(default_factory=dict)
    mask_taus: dict[str, float] = field(default_factory=dict)  # variant -> mask threshold (validation masks only)

    def to_json(self) -> dict:
        return {"val": self.val, "test": self.test,
                "taus_from_val": {v: {str(k): t for k, t in taus.items()} for v, taus in self.taus.items()},
                "mask_tau_from_val": self.mask_taus,
                "test_curves": self.test_curves,
                "test_top1_loc_per_class": {v: {str(k): x for k, x in per.items()}
                                            for v, per in self.test_per_class.items()}}


def box_curves(ev: SplitEvaluation) -> dict:
    """``{"thresholds": [T], "boxacc": {IoU: [T]}}``: box accuracy (percent) against the map threshold."""
    return {"thresholds": [float(t) for t in ev.boxes.thresholds],
            "boxacc": {int(iou): [float(x) for x in row] for iou, row in zip(ev.boxes.iou_thresholds, ev.boxes.curves())}}


def summarize(val: dict[str, SplitEvaluation], test: dict[str, SplitEvaluation]) -> FinalEvaluation:
    """Thresholds per variant from the merged validation accumulators (box thresholds, and the
    mask threshold of the best mask mIoU where validation has masks), test metrics at them."""
    taus = {name: ev.boxes.best_thresholds() for name, ev in val.items()}
    mask_taus = {name: ev.pxap.best_mask_threshold() for name, ev in val.items() if ev.pxap is not None}
    return FinalEvaluation({n: ev.summary() for n, ev in val.items()}, taus,
                           {n: ev.summary(taus[n], mask_taus.get(n)) for n, ev in test.items()},
                           {n: box_curves(ev) for n, ev in test.items()},
                           {n: ev.boxes.top1_loc_per_class(taus[n][50]) for n, ev in test.items() if 50 in taus[n]},
                           mask_taus)


def evaluate_checkpoint(state: dict, plan: DataPlan, worker: Worker, post_hoc: Iterable[str] = ()
                        ) -> tuple[dict[str, SplitEvaluation], dict[str, SplitEvaluation]]:
    """This rank's validation and test accumulators of a checkpoint, for every map variant of its
    method (and ``post_hoc`` maps on the same model). Merge over ranks, then :func:`summarize`."""
    model, method, cfg = model_from_state(state)
    model = model.to(worker.device)
    variants = map_variants(method, post_hoc)
    with torch.no_grad():
        val = evaluate_part(model, variants, plan.val, cfg.data.input_size, cfg.eval, worker, plan.sizes(plan.val))
        test = evaluate_part(model, variants, plan.test, cfg.data.input_size, cfg.eval, worker, plan.sizes(plan.test))
    return val, test


def score_here(state: dict, plan: DataPlan, post_hoc: Iterable[str] = ()) -> FinalEvaluation:
    """Score checkpoint ``state`` in this process: :func:`evaluate_checkpoint` as the only rank,
    then :func:`summarize` (thresholds on validation, the test split once)."""
    return summarize(*evaluate_checkpoint(state, plan, Worker(), post_hoc))


@dataclass
class ExampleMaps:
    """One model's maps on the report's example images (the first ``scan`` of the test split's
    first shard): ``maps`` ``(N, S, S)`` uint8 (value x 255), ``ious`` ``(N,)`` best IoU at ``tau``."""

    maps: np.ndarray
    ious: np.ndarray
    tau: float


def score_examples(state: dict, variants: dict[str, float], test_urls: list[str], scan: int = 48
                   ) -> dict[str, ExampleMaps]:
    """Score the example images with checkpoint ``state`` under each map variant (name -> τ);
    runs wherever the checkpoint is (a Ray task of the comparison, or the driver)."""

    from bgwsol.data.loader import normalize
    from bgwsol.evaluation.evaluator import batch_targets, upsample_maps
    from bgwsol.evaluation.scoremaps import best_iou_per_threshold
    from bgwsol.precision import inference_precision

    model, method, cfg = model_from_state(state)
    batch = overlay_batch(test_urls, cfg.data.input_size, scan)
    size = cfg.eval.scoremap_size
    targets = list(batch_targets(batch, size))
    labels = torch.as_tensor(batch["label"])
    precision = inference_precision("cpu", cfg.eval.precision)  # as the evaluation that chose tau ran it
    precision.prepare(model)
    with torch.no_grad():
        outputs = precision.forward(model, normalize(batch["image"]))
        own = map_variants(method)
        known = map_variants(method, [v for v in variants if v not in own])  # post-hoc maps (eigencam) too
        found = {}
        for variant, tau in variants.items():
            maps = upsample_maps(known[variant].scoremaps(outputs, labels), size).numpy()
            ious = np.array([best_iou_per_threshold(maps[j], gt, [tau], cfg.eval.multi_contour)[0]
                             for j, (_key, gt, _mask) in enumerate(targets)])
            found[variant] = ExampleMaps((maps * 255).round().astype(np.uint8), ious, float(tau))
    return found
