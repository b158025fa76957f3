"""The training loop of one worker: data, model, method, optimizer, validation, checkpoints.

``train_and_evaluate(cfg)`` runs it in this process (the later Ray Train entry point calls
the same pieces). Validation chooses the checkpoint and the operating thresholds; the test
split is read once, at the end, with those thresholds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from bgwsol.evaluation.boxes import resize_boxes
from bgwsol.config import RunConfig, to_dict, write_yaml
from bgwsol.data.images import MixedBatchSampler, SampleDataset, eval_transform, load_rgb, train_transform
from bgwsol.data.sources.records import Sample
from bgwsol.data.sources.splits import Splits, load_splits
from bgwsol.evaluation.evaluator import SplitEvaluation, evaluate, upsample_maps
from bgwsol.evaluation.scoremaps import boxes_at_threshold
from bgwsol.methods import Method, build_method
from bgwsol.models import WSOLNet, build_backbone
from bgwsol.evaluation.viz import grid, overlay

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: RunConfig, num_classes: int, method: Method) -> WSOLNet:
    """The backbone of ``cfg.model`` in the network ``method`` trains (WSOLNet, or e.g. BAS's BASNet)."""
    backbone = build_backbone(cfg.model.backbone, weights=cfg.model.weights or None)
    if cfg.model.frozen_layers:
        backbone.freeze(cfg.model.frozen_layers)
    return method.build_network(backbone, num_classes, cfg.model)


def map_variants(method: Method) -> dict[str, Method]:
    """The maps to score: the method's own, and for a foreground head also CAM alone and M alone."""
    variants = {"main": method}
    if method.needs_fg_head:
        for name, alpha in (("cam_only", 0.0), ("mask_only", 1.0)):
            variants[name] = build_method(dataclasses.replace(method.cfg, alpha=alpha))
    return variants


def compute_losses(model: torch.nn.Module, method: Method, images: torch.Tensor, labels: torch.Tensor, epoch: int,
                   amp_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The method's loss terms for one batch: the forward pass under autocast to ``amp_dtype``
    (None: full precision), the losses in fp32 outside it. Losses such as
    ``F.binary_cross_entropy`` are refused under CUDA autocast, and min-max normalized maps
    lose their low end in bf16."""
    if amp_dtype is None:
        return method.losses(model(images), labels, epoch)
    with torch.autocast(images.device.type, dtype=amp_dtype):
        outputs = model(images)
    return method.losses({k: v.float() for k, v in outputs.items()}, labels, epoch)


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.SGD:
    """Nesterov SGD; weight decay on weights only (not on biases and norm parameters)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.train.weight_decay},
                            {"params": other, "weight_decay": 0.0}],
                           lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class RunResult:
    """What a finished run reports: ``val``/``test`` metric dicts per map variant, and its files."""

    output_dir: Path
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    taus: dict[int, float]
    history: list[dict]


def _eval_loader(samples: list[Sample], cfg: RunConfig) -> DataLoader:
    return DataLoader(SampleDataset(samples, eval_transform(cfg.data.input_size), 2 * cfg.data.input_size), batch_size=64,
                      num_workers=cfg.data.num_workers)


def _summaries(evals: dict[str, SplitEvaluation], taus: dict[str, dict[int, float]] | None = None) -> dict[str, dict[str, float]]:
    return {name: ev.summary(taus[name] if taus else None) for name, ev in evals.items()}


def save_overlays(model: WSOLNet, method: Method, samples: list[Sample], cfg: RunConfig, tau: float, path: Path,
                  count: int = 12) -> Path:
    """A grid of ``count`` images: heatmap of the method's map, predicted (red) and true (green) boxes."""
    size = cfg.eval.scoremap_size
    chosen = samples[:count]
    batch = torch.stack([eval_transform(cfg.data.input_size)(load_rgb(s.path)) for s in chosen])
    model.eval()
    with torch.no_grad():
        out = model(batch)
        pred = out["logits"].argmax(1)
        maps = upsample_maps(method.scoremaps(out, pred), size).numpy()
    tiles = []
    for s, m in zip(chosen, maps):
        img = np.asarray(load_rgb(s.path).resize((size, size)))
        tiles.append(overlay(img, m, boxes_at_threshold(m, tau), resize_boxes(s.boxes, s.size, (size, size))))
    return grid(tiles, columns=6, path=path)


def train_and_evaluate(cfg: RunConfig, splits: Splits | None = None, *, show_progress: bool = True,
                       extra_maps: dict[str, Method] | None = None) -> RunResult:
    """Train ``cfg.method`` on ``cfg.data``, choose checkpoint and thresholds on validation, test once.

    ``extra_maps`` adds named map variants scored on the trained model beside the method's own
    (e.g. ``{"eigencam": EigenCAM}`` on a CAM run): each gets its own thresholds on validation
    and is read in the same single pass over the test split.

    Writes into ``cfg.output_dir``: ``config.yaml``, ``checkpoints/{best,last}.pt``,
    ``history.jsonl`` (loss terms and validation metrics), ``results.json`` and
    ``overlays_test.png``.
    """
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(cfg, out_dir / "config.yaml")
    seed_everything(cfg.train.seed)
    splits = splits or load_splits(cfg.data.dataset, cfg.data.root, cfg.data.background or None, cfg.data.val_fraction,
                                     cfg.data.max_reject_share)
    method = build_method(cfg.method)
    if method.uses_background and not splits.background:
        raise ValueError(f"method {cfg.method.name!r} needs background images: set data.background")
    model = build_model(cfg, len(splits.classes), method)
    background = splits.background if method.uses_background else []

    tf = train_transform(cfg.data.input_size)
    decode = 2 * cfg.data.input_size  # a crop of 40 % of the area still has ~1.3 source pixels per input pixel
    train_ds = ConcatDataset([SampleDataset(splits.train, tf, decode), SampleDataset(background, tf, decode)])
    sampler = MixedBatchSampler(len(splits.train), len(background), cfg.train.batch_size, cfg.data.bg_ratio,
                                cfg.train.seed)
    train_loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                              generator=torch.Generator().manual_seed(cfg.train.seed))
    val_loader = _eval_loader(splits.val, cfg)

    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(sampler)
    scheduler = cosine_with_warmup(optimizer, cfg.train.epochs * steps_per_epoch,
                                   int(cfg.train.warmup_epochs * steps_per_epoch))
    variants = {**map_variants(method), **(extra_maps or {})}
    history: list[dict] = []
    hist_file = (out_dir / "history.jsonl").open("w")
    best_score, best_epoch = -1.0, -1
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    step = 0
    for epoch in range(cfg.train.epochs):
        model.train()
        sampler.set_epoch(epoch)
        t0, seen = time.perf_counter(), 0
        sums: dict[str, float] = {}
        for batch in train_loader:
            images, labels = batch["image"], torch.as_tensor(batch["label"])
            terms = compute_losses(model, method, images, labels, epoch)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(labels)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if step % cfg.train.log_every == 0:
                rec = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                       **{k: float(v.detach()) for k, v in terms.items()}}
                history.append(rec)
                hist_file.write(json.dumps(rec) + "\n")
        elapsed = time.perf_counter() - t0
        epoch_rec: dict = {"epoch": epoch, "images_per_s": seen / elapsed,
                           **{f"train_{k}": v / max(1, steps_per_epoch) for k, v in sums.items()}}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            val = _summaries(evaluate(model, {"main": method}, val_loader, splits.val, cfg.eval))["main"]
            epoch_rec.update({f"val_{k}": v for k, v in val.items()})
            score = val[cfg.eval.select_metric]
            if score > best_score:
                best_score, best_epoch = score, epoch
                torch.save({"model": model.state_dict(), "epoch": epoch, "config": to_dict(cfg),
                            "classes": splits.classes}, ckpt_dir / "best.pt")
        history.append(epoch_rec)
        hist_file.write(json.dumps(epoch_rec) + "\n")
        hist_file.flush()
        if show_progress:
            log.info("[%s] epoch %d/%d  loss %.3f  %s  %.0f img/s  val %s %.1f", cfg.method.name, epoch + 1,
                     cfg.train.epochs, epoch_rec["train_loss"],
                     " ".join(f"{k[6:]} {v:.3f}" for k, v in epoch_rec.items() if k.startswith("train_") and k != "train_loss"),
                     epoch_rec["images_per_s"], cfg.eval.select_metric, epoch_rec.get(f"val_{cfg.eval.select_metric}", float("nan")))
    hist_file.close()
    torch.save({"model": model.state_dict(), "epoch": cfg.train.epochs - 1, "config": to_dict(cfg),
                "classes": splits.classes}, ckpt_dir / "last.pt")

    # choose thresholds on validation with the best checkpoint, then read test once
    model.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=False)["model"])
    val_evals = evaluate(model, variants, val_loader, splits.val, cfg.eval)
    taus = {name: ev.boxes.best_thresholds() for name, ev in val_evals.items()}
    test_evals = evaluate(model, variants, _eval_loader(splits.test, cfg), splits.test, cfg.eval)
    result = RunResult(out_dir, _summaries(val_evals), _summaries(test_evals, taus), taus["main"], history)
    (out_dir / "results.json").write_text(json.dumps({
        "method": cfg.method.name, "best_epoch": best_epoch, "taus_from_val": {str(k): v for k, v in taus["main"].items()},
        "val": result.val, "test": result.test}, indent=2))
    save_overlays(model, method, splits.test, cfg, taus["main"][50], out_dir / "overlays_test.png")
    return result
