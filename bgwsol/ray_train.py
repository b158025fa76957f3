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
import os
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

    from bgwsol.data.loader import EvalStream, TrainStream, collate_eval, normalize
    from bgwsol.data.shardset import ShardSet
    from bgwsol.evaluate import evaluate
    from bgwsol.methods import build_method
    from bgwsol.train import build_model, cosine_with_warmup, make_optimizer, seed_everything

    cfg = from_dict(RunConfig, config["run"])
    cluster = from_dict(ClusterConfig, config["cluster"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cluster.cpus_per_worker)))
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"

    shards = ShardSet.open(cfg.data.shards)
    method = build_method(cfg.method)
    background = None
    if method.uses_background:
        if not cfg.data.background_shards:
            raise ValueError(f"method {cfg.method.name!r} needs background images: set data.background_shards")
        background = ShardSet.open(cfg.data.background_shards)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, len(shards.classes), method)
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    optimizer = make_optimizer(core, cfg)
    steps = TrainStream.steps_for(shards.count("train"), world, cfg.train.batch_size, cfg.data.bg_ratio,
                                  background is not None)
    scheduler = cosine_with_warmup(optimizer, cfg.train.epochs * steps, int(cfg.train.warmup_epochs * steps))

    start_epoch, best_score, history = 0, -1.0, []
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
        log.info("rank %d resumes after epoch %d", rank, state["epoch"])

    stream = TrainStream(shards.urls("train"), background.urls("background") if background else None,
                         batch_size=cfg.train.batch_size, bg_ratio=cfg.data.bg_ratio, steps_per_epoch=steps,
                         input_size=cfg.data.input_size, rank=rank, world_size=world, seed=cfg.train.seed)
    loader = DataLoader(stream, batch_size=None, num_workers=cluster.loader_workers)
    val_stream = EvalStream(shards.urls("val"), input_size=cfg.data.input_size, rank=rank, world_size=world)
    val_loader = DataLoader(val_stream, batch_size=64, collate_fn=collate_eval, num_workers=cluster.loader_workers)

    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        stream.set_epoch(epoch)
        t0, seen, skipped = time.perf_counter(), 0, 0
        sums: dict[str, float] = {}
        for batch in loader:
            images = normalize(batch["image"].to(device, non_blocking=True))
            if use_amp:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                terms = method.losses(model(images), labels, epoch)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            skipped += int(batch["skipped"])
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        elapsed = time.perf_counter() - t0
        record: dict = {"epoch": epoch, "images_per_s": seen * world / elapsed, "skipped_samples": skipped,
                        "lr": scheduler.get_last_lr()[0], **{f"train_{k}": v / steps for k, v in sums.items()}}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            local = evaluate(core, {"main": method}, val_loader, None, cfg.eval, device, preprocess=normalize)["main"]
            val = gather_evaluation(local).summary()
            record.update({f"val_{k}": v for k, v in val.items()})
        history.append(record)
        score = record.get(f"val_{cfg.eval.select_metric}", -1.0)
        improved = score > best_score
        best_score = max(best_score, score)
        record["best_score"] = best_score
        if rank == 0:
            state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch, "rng": _rng_state(), "config": to_dict(cfg), "classes": shards.classes,
                     "manifest": shards.digest, "best_score": best_score, "history": history, "improved": improved}
            with tempfile.TemporaryDirectory() as d:
                torch.save(state, Path(d) / CHECKPOINT_FILE)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))
            log.info("epoch %d/%d  loss %.3f  %.0f img/s  val %s %.1f", epoch + 1, cfg.train.epochs,
                     record.get("train_loss", float("nan")), record["images_per_s"], cfg.eval.select_metric, score)
        else:
            ray.train.report(record)


def default_run_name(cfg: RunConfig) -> str:
    return f"{cfg.method.name}-{cfg.model.backbone}-seed{cfg.train.seed}"


def fit(cfg: RunConfig, cluster: ClusterConfig, callbacks: list | None = None):
    """Run (or resume) a TorchTrainer for ``cfg``; returns Ray Train's ``Result``.

    Checkpoints go to ``<storage_path>/<run_name>/``; keeps every epoch's checkpoint and the
    best by validation ``select_metric``.
    """
    import pyarrow.fs  # noqa: F401  (ensures the S3 filesystem module is importable)
    import ray.train
    from ray.train.torch import TorchTrainer

    from bgwsol.data.storage import Location, check_access

    name = cluster.run_name or default_run_name(cfg)
    loc = check_access(cluster.storage_path, writable=True)
    run_config = ray.train.RunConfig(
        name=name, storage_path=loc.fs_path, storage_filesystem=loc.filesystem(),
        failure_config=ray.train.FailureConfig(max_failures=cluster.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=None, checkpoint_score_attribute="best_score", checkpoint_score_order="max"),
        callbacks=callbacks or [])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": to_dict(cfg), "cluster": to_dict(cluster)},
        scaling_config=ray.train.ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                               resources_per_worker={"CPU": cluster.cpus_per_worker}),
        run_config=run_config)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    return trainer.fit()
