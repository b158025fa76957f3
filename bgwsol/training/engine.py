"""The one training engine: data plan, model, step, epoch, evaluation and the checkpoint format.

Every run goes through this module, wherever it runs: :mod:`bgwsol.training.local` calls
:func:`train` in this process (rank 0 of 1), :mod:`bgwsol.training.distributed` calls it on
each Ray Train worker (DDP over the process group Ray Train sets up). Both read the same
shard set with the same streaming loader (:class:`~bgwsol.data.loader.TrainStream`,
:class:`~bgwsol.data.loader.EvalStream`) and write the same checkpoint file, which resume,
the MLflow registry and ``bgwsol localize`` all read.

A run chooses its checkpoint on the validation split (``eval.select_metric``); the operating
thresholds come from validation too (:func:`evaluate_checkpoint`), and the test split is
read once, after training, with them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch

from bgwsol.checkpoint import build_model, model_from_state
from bgwsol.config import EvalConfig, RunConfig, to_dict
from bgwsol.evaluation.evaluator import SplitEvaluation, evaluate, overlay_grid
from bgwsol.methods import Method, build_method
from bgwsol.progress import ProgressSender

log = logging.getLogger(__name__)

EVAL_BATCH = 64


# ----------------------------------------------------------------------------- data


@dataclass
class RunData:
    """Where a run reads its images: a committed shard set, and a background shard set for
    methods that use one (``s3://bucket/prefix`` or a folder holding ``manifest.json``)."""

    shards: str
    background_shards: str = ""


@dataclass
class DataPlan:
    """The intact shards of a run, decided once (on the driver) for every rank.

    Every rank must read the same lists, or their step counts differ and DDP hangs. Damaged
    shards (missing, or not the size the manifest records) are left out and counted.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    background: list[str] | None
    counts: dict[str, int]          # intact samples per split ("train", "val", "test")
    expected: dict[str, int]        # samples per split in the manifest
    classes: list[str]
    class_names: list[str] | None
    digest: str                     # the dataset manifest's SHA-256
    dataset: str
    damaged: dict[str, str] = field(default_factory=dict)  # shard URL -> why
    source: str = ""                # the dataset shard set's URL
    background_source: str = ""     # the background shard set's URL ("" without one)
    background_digest: str = ""     # its manifest's SHA-256

    def inputs(self) -> list[dict]:
        """The shard sets this plan reads, as :meth:`bgwsol.tracking.runs.RunLogger.log_inputs` takes them."""
        out = [{"name": f"{self.dataset}-shards", "url": self.source, "digest": self.digest, "context": "training"}]
        if self.background_source:
            out.append({"name": "background-shards", "url": self.background_source, "digest": self.background_digest,
                        "context": "background"})
        return out

    @property
    def lost(self) -> int:
        """Samples of the dataset in damaged shards."""
        return sum(self.expected[s] - self.counts[s] for s in self.counts)


def plan_data(data: RunData, uses_background: bool) -> DataPlan:
    """Open the shard sets of ``data`` and list their intact shards; raises ShardSetError when
    no training shard is left, ValueError when a method needs background and none is set."""
    from bgwsol.data.shards.shardset import ShardSet, ShardSetError

    shards = ShardSet.open(data.shards)
    urls, counts, damaged = {}, {}, {}
    for split in ("train", "val", "test"):
        urls[split], counts[split], bad = shards.usable(split) if split in shards.splits else ([], 0, {})
        damaged.update(bad)
    background, bg_set = None, None
    if uses_background:
        if not data.background_shards:
            raise ValueError("this method needs background images: give a background shard set")
        bg_set = ShardSet.open(data.background_shards)
        background, _, bad = bg_set.usable("background")
        damaged.update(bad)
    plan = DataPlan(urls["train"], urls["val"], urls["test"], background, counts,
                    {s: shards.count(s) if s in shards.splits else 0 for s in counts}, shards.classes,
                    shards.manifest.get("class_names"), shards.digest, shards.manifest["dataset"], damaged,
                    shards.location.url, bg_set.location.url if bg_set else "", bg_set.digest if bg_set else "")
    if damaged:
        log.warning("%d damaged shards left out (%d samples of the dataset): %s", len(damaged), plan.lost,
                    "; ".join(f"{u}: {why}" for u, why in damaged.items()))
    if not plan.train or (uses_background and not background):
        raise ShardSetError(f"no intact training shards left in {data.shards}"
                            + (f" / {data.background_shards}" if uses_background else ""))
    return plan


# ----------------------------------------------------------------------------- model and optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


# ----------------------------------------------------------------------------- where a rank runs


@dataclass
class Worker:
    """This process's place in a run: rank ``rank`` of ``world``, its device and loader processes.

    On CUDA the engine trains with bf16 autocast and channels_last; on CPU in fp32, NCHW.
    """

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    loader_workers: int = 0

    @property
    def amp(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        # channels_last on GPU (the model is converted too); plain NCHW on CPU, where DDP's
        # gradient buckets expect it
        return torch.channels_last if self.amp else torch.contiguous_format


class Session(Protocol):
    """Where a run's checkpoints go and come back from (a folder here, Ray Train's storage there)."""

    def latest_state(self) -> dict | None:
        """The newest complete checkpoint's state, or None for a fresh run."""

    def report(self, record: dict, state: dict | None) -> None:
        """One epoch's ``record``; ``state`` (rank 0 only) is its checkpoint."""


class EpochLogger(Protocol):
    """What the engine logs through (rank 0 only): :class:`bgwsol.tracking.runs.RunLogger`."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


# ----------------------------------------------------------------------------- RNG state (in checkpoints)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------- evaluation


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


def eval_loader(urls: list[str], input_size: int, worker: Worker):
    """This rank's part of a split: every sample of ``urls`` exactly once across the ranks."""
    from torch.utils.data import DataLoader

    from bgwsol.data.loader import EvalStream, collate_eval

    stream = EvalStream(urls, input_size=input_size, rank=worker.rank, world_size=worker.world)
    return DataLoader(stream, batch_size=EVAL_BATCH, collate_fn=collate_eval, num_workers=worker.loader_workers)


def evaluate_part(model: torch.nn.Module, variants: dict[str, Method], urls: list[str], input_size: int,
                  eval_cfg: EvalConfig, worker: Worker) -> dict[str, SplitEvaluation]:
    """This rank's accumulators for each map variant over its part of ``urls`` (merge them with
    :func:`gather_evaluations` or ``SplitEvaluation.merge``)."""
    from bgwsol.data.loader import normalize

    return evaluate(model, variants, eval_loader(urls, input_size, worker), eval_cfg, worker.device,
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

    def to_json(self) -> dict:
        return {"val": self.val, "test": self.test,
                "taus_from_val": {v: {str(k): t for k, t in taus.items()} for v, taus in self.taus.items()},
                "test_curves": self.test_curves,
                "test_top1_loc_per_class": {v: {str(k): x for k, x in per.items()}
                                            for v, per in self.test_per_class.items()}}


def box_curves(ev: SplitEvaluation) -> dict:
    """``{"thresholds": [T], "boxacc": {IoU: [T]}}``: box accuracy (percent) against the map threshold."""
    return {"thresholds": [float(t) for t in ev.boxes.thresholds],
            "boxacc": {int(iou): [float(x) for x in row] for iou, row in zip(ev.boxes.iou_thresholds, ev.boxes.curves())}}


def summarize(val: dict[str, SplitEvaluation], test: dict[str, SplitEvaluation]) -> FinalEvaluation:
    """Thresholds per variant from the merged validation accumulators, test metrics at them."""
    taus = {name: ev.boxes.best_thresholds() for name, ev in val.items()}
    return FinalEvaluation({n: ev.summary() for n, ev in val.items()}, taus,
                           {n: ev.summary(taus[n]) for n, ev in test.items()},
                           {n: box_curves(ev) for n, ev in test.items()},
                           {n: ev.boxes.top1_loc_per_class(taus[n][50]) for n, ev in test.items() if 50 in taus[n]})


def evaluate_checkpoint(state: dict, plan: DataPlan, worker: Worker, post_hoc: Iterable[str] = ()
                        ) -> tuple[dict[str, SplitEvaluation], dict[str, SplitEvaluation]]:
    """This rank's validation and test accumulators of a checkpoint, for every map variant of its
    method (and ``post_hoc`` maps on the same model). Merge over ranks, then :func:`summarize`."""
    model, method, cfg = model_from_state(state)
    model = model.to(worker.device)
    variants = map_variants(method, post_hoc)
    with torch.no_grad():
        val = evaluate_part(model, variants, plan.val, cfg.data.input_size, cfg.eval, worker)
        test = evaluate_part(model, variants, plan.test, cfg.data.input_size, cfg.eval, worker)
    return val, test


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
    if worker.amp:
        core = core.to(memory_format=torch.channels_last)
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
    sums: dict[str, float] = {}
    step = epoch * training.steps_per_epoch
    for batch in loader:
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
            "damaged_shards": len(training.plan.damaged), "damaged_samples": training.plan.lost,
            "lr": training.scheduler.get_last_lr()[0],
            **{f"train_{k}": v / training.steps_per_epoch for k, v in sums.items()}}


def validate(training: Training) -> dict[str, float]:
    """The method's own map on the validation split, merged over the ranks: metrics prefixed
    ``val_``, the thresholds chosen there (``val_tau<IoU>``) and ``val_missing``, the images
    that could not be scored (in damaged shards or corrupt)."""
    cfg, plan = training.cfg, training.plan
    local = evaluate_part(training.core, {"main": training.method}, plan.val, cfg.data.input_size, cfg.eval,
                          training.worker)
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
                           training.worker.device, preprocess=normalize)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"overlays_epoch{epoch:03d}.png"
        picture.save(path)
        logger.log_artifact(path, "overlays")


def train(cfg: RunConfig, plan: DataPlan, worker: Worker, session: Session, logger: EpochLogger | None = None,
          on_start=None, progress: ProgressSender | None = None) -> Training:
    """Train ``cfg`` on ``plan`` as rank ``worker.rank`` of ``worker.world``, from the session's
    latest checkpoint if it has one. Each epoch: steps, validation every ``train.eval_every``
    epochs (and at the end), one report to ``session`` (with the checkpoint on rank 0).

    ``logger`` (rank 0 only) receives step and epoch metrics and the overlay pictures;
    ``on_start(training)`` (rank 0) runs once the model is built and any checkpoint restored,
    e.g. to open the tracking run whose id the checkpoint carries; ``progress`` (rank 0) gets
    step and epoch events for a console.
    """
    training = build_training(cfg, plan, worker)
    state = session.latest_state()
    if state is not None:
        restore(training, state)
    if on_start is not None:
        on_start(training)
    stream, loader = train_stream(training)
    overlays = None
    for epoch in range(training.start_epoch, cfg.train.epochs):
        stream.set_epoch(epoch)
        record = train_one_epoch(training, loader, epoch, logger, progress)
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            record.update(validate(training))
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


def test_overlays(state: dict, plan: DataPlan, tau: float, count: int = 12):
    """A picture of the first ``count`` test images under every map variant of a checkpoint, at ``tau``."""
    from bgwsol.data.loader import normalize

    model, method, cfg = model_from_state(state)
    batch = overlay_batch(plan.test, cfg.data.input_size, count)
    return overlay_grid(model, map_variants(method), batch, cfg.eval.scoremap_size, tau, preprocess=normalize,
                        count=count)


def write_run_files(directory: str | Path, cfg: RunConfig, state: dict, final: FinalEvaluation,
                    picture=None) -> Path:
    """A finished run's files for people: ``config.yaml``, ``history.jsonl`` (one line per
    epoch), ``results.json`` (validation, thresholds chosen there, test) and, given,
    ``overlays_test.png``."""
    from bgwsol.config import write_yaml

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(cfg, out / "config.yaml")
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state.get("history", [])))
    (out / "results.json").write_text(json.dumps({
        "method": cfg.method.name, "best_epoch": state.get("epoch"), **final.to_json()}, indent=2))
    if picture is not None:
        picture.save(out / "overlays_test.png")
    return out
