"""Ray Train V2: the per-worker loop over shards, and the driver call that runs it.

Each of ``num_workers`` workers (DDP: nccl on GPU, gloo on CPU) streams its own batches from
the shard set (:class:`~bgwsol.data.loader.TrainStream`: the same number of batches on every
rank), evaluates its part of the validation split every ``eval_every`` epochs
(:class:`~bgwsol.data.loader.EvalStream`) and the evaluators are merged on rank 0. Rank 0
reports a checkpoint per epoch through ``ray.train.report`` to the run's storage (a local
folder or ``s3://``): model, optimizer, scheduler, epoch, RNG states, resolved config,
dataset manifest digest, best score and history. A restarted worker group
(``FailureConfig(max_failures)``) or a rerun with the same run name resumes from the latest
checkpoint.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bgwsol.config import RunConfig, from_dict, option, to_dict

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILE = "bgwsol_run.json"  # beside Ray Train's own files: what the run trains, written at its first start

# settings a rerun of the same run name may change: the schedule's length, evaluation and logging
RESUMABLE = ("output_dir", "train.epochs", "train.eval_every", "train.log_every", "data.num_workers", "eval.")


def intact_shards(cfg: RunConfig, shards, uses_background: bool) -> dict:
    """The shards a run reads, without damaged ones, decided once on the driver for every rank.

    Damaged shards (missing, or not the size the manifest records: a cut-off upload) are left
    out, counted and reported; a streaming tar reader would stop early at a cut without a word.
    Every rank must get the same list, or their step counts differ and DDP hangs. Returns
    ``{"train", "val", "background": [url], "train_count", "damaged": {url: reason}, "lost"}``;
    raises ShardSetError when no training shard is left. ``shards``: the run's open ShardSet.
    """
    from bgwsol.data.shards.shardset import ShardSet, ShardSetError

    train, train_count, damaged = shards.usable("train")
    val, val_count, bad_val = shards.usable("val")
    damaged.update(bad_val)
    background = None
    if uses_background:
        if not cfg.data.background_shards:
            raise ValueError(f"method {cfg.method.name!r} needs background images: set data.background_shards")
        background, _, bad_bg = ShardSet.open(cfg.data.background_shards).usable("background")
        damaged.update(bad_bg)
    lost = shards.count("train") - train_count + shards.count("val") - val_count
    if damaged:
        log.warning("%d damaged shards left out (%d samples of the dataset): %s", len(damaged), lost,
                    "; ".join(f"{u}: {why}" for u, why in damaged.items()))
    if not train or (uses_background and not background):
        raise ShardSetError(f"no intact training shards left in {cfg.data.shards}"
                            + (f" / {cfg.data.background_shards}" if uses_background else ""))
    return {"train": train, "val": val, "background": background, "train_count": train_count,
            "damaged": damaged, "lost": lost}


class IncompatibleRun(RuntimeError):
    """A run name whose checkpoints were trained with another model, method, data or schedule."""


def run_identity(cfg: RunConfig, digest: str) -> dict:
    """What a run's checkpoints depend on: the config without :data:`RESUMABLE` keys, and the data."""
    from bgwsol.config import flatten

    flat = {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith(RESUMABLE)}
    return {"config": flat, "manifest": digest}


def identity_tag(cfg: RunConfig, digest: str) -> str:
    """8 hex digits of :func:`run_identity`: a run name with it continues only the same training."""
    import hashlib
    import json

    blob = json.dumps(run_identity(cfg, digest), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def claim_run(run_dir, cfg: RunConfig, digest: str) -> bool:
    """Record the run's identity at its first start; on a rerun, refuse a different one.

    ``run_dir`` is a :class:`~bgwsol.data.storage.Location` (local or ``s3://``). Returns True
    when the run existed (a rerun continues it). Raises :class:`IncompatibleRun` naming the
    settings that differ, before any worker starts.
    """
    import json

    mine = run_identity(cfg, digest)
    marker = run_dir.join(RUN_FILE)
    if not marker.exists():
        marker.write_bytes(json.dumps(mine, indent=1, sort_keys=True, default=str).encode())
        return False
    theirs = json.loads(marker.read_bytes())
    if theirs["manifest"] != mine["manifest"]:
        raise IncompatibleRun(f"{run_dir.url} was trained on shard set {theirs['manifest'][:12]}, this run reads "
                              f"{digest[:12]}: give this run a new name (--cluster.run_name)")
    old, new = theirs["config"], json.loads(json.dumps(mine["config"], default=str))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise IncompatibleRun(f"{run_dir.url} holds checkpoints of another configuration ({shown}"
                              f"{'; ...' if len(diff) > 6 else ''}): give this run a new name (--cluster.run_name) "
                              f"or restore those settings; only {', '.join(RESUMABLE)} may change on a rerun")
    return True


@dataclass
class ClusterConfig:
    """How a run uses the Ray cluster."""

    num_workers: int = option(2, "Ray Train workers (one DDP rank each)")
    use_gpu: bool = option(False, "one GPU per worker (AMP bf16 + channels_last, nccl)")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (also its torch threads)")
    storage_path: str = option("runs/ray", "where Ray Train keeps checkpoints: a local folder or s3://bucket/prefix")
    run_name: str = option("", "Ray Train run name; rerunning the same name resumes it (empty: derived from the config)")
    max_failures: int = option(2, "worker-group restarts from the latest checkpoint before the run fails")
    loader_workers: int = option(0, "DataLoader processes per worker")


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def gather_evaluation(local):
    """Merge every rank's SplitEvaluation (torch.distributed object gather); all ranks get the sum."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    return merged


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry point. ``config``: ``{"run": to_dict(RunConfig), "cluster": {...}}``."""
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader

    from bgwsol.config import flatten
    from bgwsol.data.loader import EvalStream, TrainStream, collate_eval, normalize
    from bgwsol.data.shards.shardset import ShardSet
    from bgwsol.evaluation.evaluator import evaluate, overlay_grid
    from bgwsol.methods import build_method
    from bgwsol.tracking.runs import RunLogger, TrackingConfig, git_state
    from bgwsol.training.engine import (build_model, compute_losses, cosine_with_warmup, make_optimizer, map_variants,
                              seed_everything)

    cfg = from_dict(RunConfig, config["run"])
    cluster = from_dict(ClusterConfig, config["cluster"])
    tracking = from_dict(TrackingConfig, config.get("tracking", {}))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cluster.cpus_per_worker)))
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"

    shards = ShardSet.open(cfg.data.shards)
    method = build_method(cfg.method)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, len(shards.classes), method)
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    optimizer = make_optimizer(core, cfg)
    # train.batch_size is the global batch: each of the `world` ranks takes its share, so a run
    # takes the same optimizer steps per epoch as the one-process loop
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by {world} workers")
    rank_batch = cfg.train.batch_size // world
    plan = config["shards"]  # the intact shards, the same list for every rank (intact_shards)
    train_urls, val_urls, bg_urls = plan["train"], plan["val"], plan["background"]
    damaged, lost = plan["damaged"], plan["lost"]
    steps = TrainStream.steps_for(plan["train_count"], world, rank_batch, cfg.data.bg_ratio, bg_urls is not None)
    scheduler = cosine_with_warmup(optimizer, cfg.train.epochs * steps, int(cfg.train.warmup_epochs * steps))

    start_epoch, best_score, history, mlflow_run_id = 0, -1.0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=False)
        if state["manifest"] != shards.digest:
            raise RuntimeError(f"checkpoint was trained on shard set {state['manifest'][:12]} but "
                               f"{cfg.data.shards} is {shards.digest[:12]}: use a new run name")
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_epoch, best_score, history = state["epoch"] + 1, state["best_score"], state["history"]
        mlflow_run_id = state.get("mlflow_run_id")
        log.info("rank %d resumes after epoch %d", rank, state["epoch"])

    stream = TrainStream(train_urls, bg_urls,
                         batch_size=rank_batch, bg_ratio=cfg.data.bg_ratio, steps_per_epoch=steps,
                         input_size=cfg.data.input_size, rank=rank, world_size=world, seed=cfg.train.seed)
    loader = DataLoader(stream, batch_size=None, num_workers=cluster.loader_workers)
    val_stream = EvalStream(val_urls, input_size=cfg.data.input_size, rank=rank, world_size=world)
    val_loader = DataLoader(val_stream, batch_size=64, collate_fn=collate_eval, num_workers=cluster.loader_workers)

    logger = RunLogger(tracking, config.get("run_name", default_run_name(cfg)), run_id=mlflow_run_id,
                       parent_run_id=config.get("parent_run_id"))
    if rank == 0:
        mlflow_run_id = logger.start(
            params={**flatten(to_dict(cfg)), **{f"cluster.{k}": v for k, v in to_dict(cluster).items()}},
            tags={**git_state(), "dataset_manifest_sha256": shards.digest, "dataset": shards.manifest["dataset"]})
    variants = map_variants(method)
    overlay_batch = None
    step = start_epoch * steps
    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        stream.set_epoch(epoch)
        t0, seen, skipped = time.perf_counter(), 0, 0
        sums: dict[str, float] = {}
        for batch in loader:
            # channels_last on GPU (the model is converted too); plain NCHW on CPU, where DDP's
            # gradient buckets expect it
            images = normalize(batch["image"].to(device, non_blocking=True)).contiguous(
                memory_format=torch.channels_last if use_amp else torch.contiguous_format)
            labels = batch["label"].to(device)
            terms = compute_losses(model, method, images, labels, epoch, torch.bfloat16 if use_amp else None)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            skipped += int(batch["skipped"])
            step += 1
            values = {k: float(v.detach()) for k, v in terms.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if rank == 0 and step % cfg.train.log_every == 0:
                logger.log_metrics({**{f"step/{k}": v for k, v in values.items()},
                                    "step/lr": scheduler.get_last_lr()[0]}, step)
        elapsed = time.perf_counter() - t0
        record: dict = {"epoch": epoch, "images_per_s": seen * world / elapsed, "skipped_samples": skipped,
                        "damaged_shards": len(damaged), "damaged_samples": lost,
                        "lr": scheduler.get_last_lr()[0], **{f"train_{k}": v / steps for k, v in sums.items()}}
        picture = None
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            local = evaluate(core, {"main": method}, val_loader, None, cfg.eval, device, preprocess=normalize)["main"]
            merged = gather_evaluation(local)
            val = merged.summary()
            record.update({f"val_{k}": v for k, v in val.items()})
            record.update({f"val_tau{iou}": tau for iou, tau in merged.boxes.best_thresholds().items()})
            # never a validation score that looks complete but is not: say how many were not scored
            record["val_missing"] = shards.count("val") - int(val.get("num_images", 0))
            if record["val_missing"] and rank == 0:
                log.warning("validation scored %d of %d images (%d in damaged shards or corrupt)",
                            int(val.get("num_images", 0)), shards.count("val"), record["val_missing"])
            if rank == 0 and logger.enabled:
                if overlay_batch is None:  # the same 8 validation images every epoch, read once
                    overlay_batch = next(iter(DataLoader(EvalStream(val_urls[:1], input_size=cfg.data.input_size),
                                                         batch_size=8, collate_fn=collate_eval)))
                picture = overlay_grid(core, variants, overlay_batch, cfg.eval.scoremap_size,
                                       record.get("val_tau50", 0.5), device, preprocess=normalize)
        history.append(record)
        score = record.get(f"val_{cfg.eval.select_metric}", -1.0)
        improved = score > best_score
        best_score = max(best_score, score)
        record["best_score"] = best_score
        record["score"] = score
        if rank == 0:
            state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch, "rng": _rng_state(), "config": to_dict(cfg), "classes": shards.classes,
                     "manifest": shards.digest, "best_score": best_score, "history": history, "improved": improved,
                     "mlflow_run_id": mlflow_run_id}
            logger.log_metrics({k: v for k, v in record.items() if k != "epoch"}, epoch)
            with tempfile.TemporaryDirectory() as d:
                if picture is not None:
                    picture.save(Path(d) / f"overlays_epoch{epoch:03d}.png")
                    logger.log_artifact(Path(d) / f"overlays_epoch{epoch:03d}.png", "overlays")
                torch.save(state, Path(d) / CHECKPOINT_FILE)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))
            log.info("epoch %d/%d  loss %.3f  %.0f img/s  val %s %.1f", epoch + 1, cfg.train.epochs,
                     record.get("train_loss", float("nan")), record["images_per_s"], cfg.eval.select_metric, score)
        else:
            ray.train.report(record)
    if rank == 0:
        logger.end()


def default_run_name(cfg: RunConfig) -> str:
    return f"{cfg.method.name}-{cfg.model.backbone}-seed{cfg.train.seed}"


def fit(cfg: RunConfig, cluster: ClusterConfig, tracking=None, callbacks: list | None = None,
        parent_run_id: str | None = None):
    """Run (or resume) a TorchTrainer for ``cfg``; returns Ray Train's ``Result``.

    Checkpoints go to ``<storage_path>/<run_name>/``; keeps every epoch's checkpoint and the
    best by validation ``select_metric``.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from bgwsol.data.shards.shardset import ShardSet
    from bgwsol.data.storage import check_access
    from bgwsol.methods import build_method
    from bgwsol.tracking.runs import check_tracking

    name = cluster.run_name or default_run_name(cfg)
    loc = check_access(cluster.storage_path, writable=True)
    # refuse what cannot work before any worker starts (a restart would only repeat the failure)
    if tracking is not None:
        check_tracking(tracking)
    shards = ShardSet.open(cfg.data.shards)
    if claim_run(loc.join(name), cfg, shards.digest):
        log.info("run %s exists under %s: continuing from its latest checkpoint", name, loc.url)
    plan = intact_shards(cfg, shards, build_method(cfg.method).uses_background)
    run_config = ray.train.RunConfig(
        name=name, storage_path=loc.fs_path, storage_filesystem=loc.filesystem(),
        failure_config=ray.train.FailureConfig(max_failures=cluster.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=None, checkpoint_score_attribute="best_score", checkpoint_score_order="max"),
        callbacks=callbacks or [])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": to_dict(cfg), "cluster": to_dict(cluster), "run_name": name, "shards": plan,
                           "tracking": to_dict(tracking) if tracking is not None else {},
                           "parent_run_id": parent_run_id},
        scaling_config=ray.train.ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                               resources_per_worker={"CPU": cluster.cpus_per_worker}),
        run_config=run_config)
    return trainer.fit()


def best_checkpoint(result) -> tuple[dict, dict]:
    """``(state, metrics)`` of the reported checkpoint with the highest validation score."""
    candidates = [(ckpt, m) for ckpt, m in (result.best_checkpoints or []) if m.get("score", -1) >= 0]
    if not candidates:
        raise RuntimeError(f"run {result.path}: no checkpoint with a validation score")
    ckpt, metrics = max(candidates, key=lambda cm: cm[1]["score"])
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    return state, metrics


def load_result(storage_path: str, run_name: str):
    """The Ray Train ``Result`` of the run ``run_name`` under ``storage_path`` (local or ``s3://``)."""
    import ray.train

    from bgwsol.data.storage import Location

    loc = Location.parse(storage_path).join(run_name)
    return ray.train.Result.from_path(loc.fs_path, storage_filesystem=loc.filesystem())
