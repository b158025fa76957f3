"""The one training engine: model, optimizer, step, epoch, validation and the checkpoints.

Every run goes through this module, wherever it runs: :mod:`bgwsol.training.local` calls
:func:`train` in this process (rank 0 of 1), :mod:`bgwsol.training.distributed` calls it on
each Ray Train worker (DDP over the process group Ray Train sets up). Both read the same
shard set (a :class:`~bgwsol.data.plan.DataPlan`) with the same streaming loader and write the
same checkpoint file, which resume, the MLflow registry and ``bgwsol localize`` all read.

Training only produces checkpoints: a run chooses its checkpoint on the validation split
(``eval.select_metric``), and scoring it afterwards (thresholds on validation, the test split
once) is :mod:`bgwsol.evaluation.scoring`'s.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from bgwsol.checkpoint import build_model
from bgwsol.config import RunConfig, to_dict
from bgwsol.data.plan import DataPlan, Worker
from bgwsol.evaluation.evaluator import overlay_grid
from bgwsol.precision import fp32_outputs
from bgwsol.evaluation.scoring import evaluate_part, gather_evaluations, map_variants, overlay_batch
from bgwsol.methods import Method, build_method
from bgwsol.progress import ProgressSender

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- model and optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    return method.losses(fp32_outputs(outputs), labels, epoch)  # not BAS's erased_cams function


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.SGD:
    """Nesterov SGD; weight decay on weights only (not on biases and norm parameters). With
    ``train.head_lr_mult`` other than 1, the layers the method adds to the backbone (classifier,
    heads, BAS's generator) train at that multiple of ``train.lr`` (as the BAS authors train theirs
    at 10x), in two more parameter groups; at 1 the two groups are those of earlier checkpoints."""
    lr, mult, wd = cfg.train.lr, cfg.train.head_lr_mult, cfg.train.weight_decay
    backbone = getattr(model, "backbone", None)
    if mult == 1.0 or backbone is None:
        parts = [(list(model.parameters()), lr)]
    else:
        mine = {id(p) for p in backbone.parameters()}
        parts = [(list(backbone.parameters()), lr), ([p for p in model.parameters() if id(p) not in mine], lr * mult)]
    groups = []
    for params, part_lr in parts:
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd, "lr": part_lr},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": part_lr}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.train.momentum, nesterov=True)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- where a rank runs


class Session(Protocol):
    """Where a run's checkpoints go and come back from (a folder here, Ray Train's storage there)."""

    def latest_state(self) -> dict | None:
        """The newest complete checkpoint's state, or None for a fresh run."""

    def report(self, record: dict, state: dict | None) -> None:
        """One epoch's ``record``; ``state`` (rank 0 only) is its checkpoint."""


class EpochLogger(Protocol):
    """What the engine logs through (rank 0 only): :class:`bgwsol.tracking.run_logger.RunLogger`."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


# ----------------------------------------------------------------------------- RNG state (in checkpoints)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------- training


@dataclass
class Training:
    """What one rank trains with: the (possibly DDP-wrapped) model, its core, the loop's parts."""

    cfg: RunConfig
    plan: DataPlan
    worker: Worker
    method: Method
    model: torch.nn.Module
    core: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    rank_batch: int
    start_epoch: int = 0
    best_score: float = -1.0
    history: list[dict] = field(default_factory=list)
    mlflow_run_id: str | None = None


def build_training(cfg: RunConfig, plan: DataPlan, worker: Worker) -> Training:
    """Seeded model, optimizer and schedule for this rank. ``train.batch_size`` is the global
    batch: each rank takes ``batch_size / world``, so a run takes the same optimizer steps per
    epoch whatever the number of workers."""
    from bgwsol.data.loader import TrainStream

    if cfg.train.batch_size % worker.world:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by {worker.world} workers")
    method = build_method(cfg.method)
    seed_everything(cfg.train.seed)
    core = build_model(cfg, len(plan.classes), method).to(worker.device)
    core = core.to(memory_format=worker.memory_format)
    model = core
    if worker.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.device(worker.device).index] if worker.amp else None
        model = DistributedDataParallel(core, device_ids=device_ids)
    optimizer = make_optimizer(core, cfg)
    rank_batch = cfg.train.batch_size // worker.world
    steps = TrainStream.steps_for(plan.counts["train"], worker.world, rank_batch, cfg.data.bg_ratio,
                                  plan.background is not None)
    scheduler = cosine_with_warmup(optimizer, cfg.train.epochs * steps, int(cfg.train.warmup_epochs * steps))
    return Training(cfg, plan, worker, method, model, core, optimizer, scheduler, steps, rank_batch)


def restore(training: Training, state: dict) -> None:
    """Continue ``training`` after the epoch of checkpoint ``state`` (refused for another data set)."""
    if state["manifest"] != training.plan.digest:
        raise RuntimeError(f"checkpoint was trained on shard set {state['manifest'][:12]} but this run reads "
                           f"{training.plan.digest[:12]}: use a new run name")
    training.core.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    training.start_epoch, training.best_score = state["epoch"] + 1, state["best_score"]
    training.history, training.mlflow_run_id = list(state["history"]), state.get("mlflow_run_id")
    log.info("rank %d resumes after epoch %d", training.worker.rank, state["epoch"])


def train_stream(training: Training):
    """This rank's training batches (``DataLoader`` over :class:`~bgwsol.data.loader.TrainStream`)."""
    from torch.utils.data import DataLoader

    from bgwsol.data.loader import TrainStream

    cfg, plan, worker = training.cfg, training.plan, training.worker
    stream = TrainStream(plan.train, plan.background, batch_size=training.rank_batch, bg_ratio=cfg.data.bg_ratio,
                         steps_per_epoch=training.steps_per_epoch, input_size=cfg.data.input_size, rank=worker.rank,
                         world_size=worker.world, seed=cfg.train.seed)
    return stream, DataLoader(stream, batch_size=None, num_workers=worker.loader_workers)


def train_one_epoch(training: Training, loader, epoch: int, logger: EpochLogger | None = None,
                    progress: ProgressSender | None = None) -> dict:
    """One pass of optimizer steps; returns the epoch's record (mean loss terms, images/s over
    all ranks, samples skipped as corrupt, learning rate). Logs the loss terms every
    ``train.log_every`` steps through ``logger``; tells ``progress`` after each step."""
    from bgwsol.data.loader import normalize

    worker, cfg = training.worker, training.cfg
    training.model.train()
    amp_dtype = torch.bfloat16 if worker.amp else None
    t0, seen, skipped = time.perf_counter(), 0, 0
    first_batch_s = None
    sums: dict[str, float] = {}
    step = epoch * training.steps_per_epoch
    for batch in loader:
        if first_batch_s is None:  # the loader's start: shard reads, buffer fill (processes, with loader_workers)
            first_batch_s = time.perf_counter() - t0
        images = normalize(batch["image"].to(worker.device, non_blocking=True)).contiguous(
            memory_format=worker.memory_format)
        labels = batch["label"].to(worker.device)
        terms = compute_losses(training.model, training.method, images, labels, epoch, amp_dtype)
        training.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        training.optimizer.step()
        training.scheduler.step()
        seen += len(labels)
        skipped += int(batch["skipped"])
        step += 1
        values = {k: float(v.detach()) for k, v in terms.items()}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        if logger is not None and step % cfg.train.log_every == 0:
            logger.log_metrics({**{f"step/{k}": v for k, v in values.items()},
                                "step/lr": training.scheduler.get_last_lr()[0]}, step)
        if progress is not None:
            progress.step(epoch, step - epoch * training.steps_per_epoch, training.steps_per_epoch,
                          seen * worker.world, time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0
    return {"epoch": epoch, "images_per_s": seen * worker.world / elapsed, "skipped_samples": skipped,
            "time_train_s": elapsed, "time_first_batch_s": first_batch_s or 0.0,
            "damaged_shards": len(training.plan.damaged), "damaged_samples": training.plan.lost,
            "lr": training.scheduler.get_last_lr()[0],
            **{f"train_{k}": v / training.steps_per_epoch for k, v in sums.items()}}


def validate(training: Training) -> dict[str, float]:
    """The method's own map on the validation split, merged over the ranks: metrics prefixed
    ``val_``, the thresholds chosen there (``val_tau<IoU>``) and ``val_missing``, the images
    that could not be scored (in damaged shards or corrupt)."""
    cfg, plan = training.cfg, training.plan
    local = evaluate_part(training.core, {"main": training.method}, plan.val, cfg.data.input_size, cfg.eval,
                          training.worker, plan.sizes(plan.val))
    merged = gather_evaluations(local)["main"]
    val = merged.summary()
    record = {f"val_{k}": v for k, v in val.items()}
    record.update({f"val_tau{iou}": float(tau) for iou, tau in merged.boxes.best_thresholds().items()})
    # never a validation score that looks complete but is not: say how many were not scored
    record["val_missing"] = plan.expected["val"] - int(val.get("num_images", 0))
    if record["val_missing"] and training.worker.rank == 0:
        log.warning("validation scored %d of %d images (%d in damaged shards or corrupt)", int(val.get("num_images", 0)),
                    plan.expected["val"], record["val_missing"])
    return record


def checkpoint_state(training: Training, epoch: int, improved: bool) -> dict:
    """The checkpoint of ``training`` after ``epoch`` (:mod:`bgwsol.checkpoint` lists its keys)."""
    plan = training.plan
    return {"model": training.core.state_dict(), "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(), "epoch": epoch, "rng": _rng_state(),
            "config": to_dict(training.cfg), "classes": plan.classes, "class_names": plan.class_names,
            "manifest": plan.digest, "best_score": training.best_score, "history": training.history,
            "improved": improved, "mlflow_run_id": training.mlflow_run_id}


def log_overlays(training: Training, logger: EpochLogger, batch: dict, tau: float, epoch: int) -> None:
    """A picture of the overlay images under every map variant, logged as ``overlays/overlays_epochNNN.png``."""
    import tempfile

    from bgwsol.data.loader import normalize

    picture = overlay_grid(training.core, map_variants(training.method), batch, training.cfg.eval.scoremap_size, tau,
                           training.worker.device, preprocess=normalize, precision=training.cfg.eval.precision)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"overlays_epoch{epoch:03d}.png"
        picture.save(path)
        logger.log_artifact(path, "overlays")


def train(cfg: RunConfig, plan: DataPlan, worker: Worker, session: Session, logger: EpochLogger | None = None,
          on_start=None, progress: ProgressSender | None = None, startup: dict[str, float] | None = None) -> Training:
    """Train ``cfg`` on ``plan`` as rank ``worker.rank`` of ``worker.world``, from the session's
    latest checkpoint if it has one. Each epoch: steps, validation every ``train.eval_every``
    epochs (and at the end), one report to ``session`` (with the checkpoint on rank 0).

    ``logger`` (rank 0 only) receives step and epoch metrics and the overlay pictures;
    ``on_start(training)`` (rank 0) runs once the model is built and any checkpoint restored,
    e.g. to open the tracking run whose id the checkpoint carries; ``progress`` (rank 0) gets
    step and epoch events for a console.

    Where the time goes, in seconds, in each epoch's record: ``time_train_s`` (its steps),
    ``time_first_batch_s`` (of which waiting for the first batch), ``time_validation_s``; the
    first epoch of each start also carries ``startup`` (the caller's figures, e.g. the worker
    group's start, plus ``startup_build_s``: model, weights and DDP, and ``startup_resume_s``:
    checkpoint and tracking run).
    """
    t0 = time.perf_counter()
    training = build_training(cfg, plan, worker)
    t1 = time.perf_counter()
    state = session.latest_state()
    if state is not None:
        restore(training, state)
    if on_start is not None:
        on_start(training)
    startup = {**(startup or {}), "startup_build_s": t1 - t0, "startup_resume_s": time.perf_counter() - t1}
    stream, loader = train_stream(training)
    overlays = None
    for epoch in range(training.start_epoch, cfg.train.epochs):
        stream.set_epoch(epoch)
        record = train_one_epoch(training, loader, epoch, logger, progress)
        record.update(startup)
        startup = {}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            t_val = time.perf_counter()
            record.update(validate(training))
            record["time_validation_s"] = time.perf_counter() - t_val
            if logger is not None:
                overlays = overlays or overlay_batch(plan.val, cfg.data.input_size)
                log_overlays(training, logger, overlays, record.get("val_tau50", 0.5), epoch)
        training.history.append(record)
        score = record.get(f"val_{cfg.eval.select_metric}", -1.0)
        improved = score > training.best_score
        training.best_score = max(training.best_score, score)
        record["best_score"], record["score"] = training.best_score, score
        state = checkpoint_state(training, epoch, improved) if worker.rank == 0 else None
        if logger is not None:
            logger.log_metrics({k: v for k, v in record.items() if k != "epoch"}, epoch)
        session.report(record, state)
        if progress is not None:
            progress.epoch(record)
        if worker.rank == 0:
            log.info("[%s] epoch %d/%d  loss %.3f  %.0f img/s  val %s %.1f", cfg.method.name, epoch + 1,
                     cfg.train.epochs, record.get("train_loss", float("nan")), record["images_per_s"],
                     cfg.eval.select_metric, score)
    return training
