"""Ray Train step throughput vs a plain single-process PyTorch loop (same model, data, batch size).

Both read the same local shard set through ``TrainStream`` and run the same method's losses
and SGD step: the plain loop in this process, then a 1-worker Ray Train V2 ``TorchTrainer``
(``bgwsol.training.distributed.fit``) whose workers time their own training loop each epoch
(``images_per_s``, evaluation excluded). Printed: images/s of each and the ratio. The shard
set is the synthetic ILSVRC (``flows/shard_ilsvrc.py`` writes it; this script does if missing).

    python benchmarks/bench_train_step.py --epochs 3 --method bgwsol --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from bgwsol.config import RunConfig, replace
from bgwsol.data.loader import TrainStream, normalize
from bgwsol.data.shards.shardset import ShardSet
from bgwsol.methods import build_method
from bgwsol.training.distributed import CHECKPOINT_FILE, ClusterConfig, fit
from bgwsol.data.plan import RunData
from bgwsol.training.engine import build_model, make_optimizer


def plain_loop(cfg: RunConfig, data: RunData, epochs: int) -> float:
    """images/s of the same training step without Ray (epoch 0 is warm-up, not timed)."""
    shards = ShardSet.open(data.shards)
    bg = ShardSet.open(data.background_shards)
    method = build_method(cfg.method)
    model = build_model(cfg, len(shards.classes), method)
    opt = make_optimizer(model, cfg)
    steps = TrainStream.steps_for(shards.count("train"), 1, cfg.train.batch_size, cfg.data.bg_ratio, True)
    stream = TrainStream(shards.urls("train"), bg.urls("background") if method.uses_background else None,
                         batch_size=cfg.train.batch_size, bg_ratio=cfg.data.bg_ratio, steps_per_epoch=steps,
                         input_size=cfg.data.input_size, seed=cfg.train.seed)
    rates = []
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        model.train()
        t0, seen = time.perf_counter(), 0
        for batch in DataLoader(stream, batch_size=None):
            terms = method.losses(model(normalize(batch["image"]).contiguous()), batch["label"], epoch)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            seen += len(batch["label"])
        rates.append(seen / (time.perf_counter() - t0))
    return max(rates[1:]) if len(rates) > 1 else rates[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="data/shards/ilsvrc")
    p.add_argument("--background", default="data/shards/background")
    p.add_argument("--method", default="bgwsol")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads in both (the worker reserves as many CPUs)")
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.shards, "manifest.json")):
        from bgwsol.data.shards.jobs import BackgroundShardJob, DatasetShardJob, run_background_job, run_dataset_job

        run_dataset_job(DatasetShardJob(output=args.shards))
        run_background_job(BackgroundShardJob(output=args.background))
    cfg = replace(RunConfig(), **{"method.name": args.method, "train.epochs": args.epochs, "train.eval_every": 1000})
    data = RunData(os.path.abspath(args.shards), os.path.abspath(args.background))
    torch.set_num_threads(args.threads)
    plain = plain_loop(cfg, data, args.epochs)
    import ray

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as d:
        result = fit(cfg, data, ClusterConfig(num_workers=1, cpus_per_worker=args.threads, storage_path=d, run_name="bench"))
        with result.checkpoint.as_directory() as ckpt:
            history = torch.load(os.path.join(ckpt, CHECKPOINT_FILE), weights_only=False)["history"]
        rates = [h["images_per_s"] for h in history]
    ray_rate = max(rates[1:]) if len(rates) > 1 else rates[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.method}, tiny backbone, "
          f"batch {cfg.train.batch_size}, {cfg.data.input_size}px, {args.threads} torch threads, best epoch after warm-up")
    print(f"plain PyTorch loop:          {plain:7.1f} img/s")
    print(f"Ray Train (1 worker):        {ray_rate:7.1f} img/s")
    print(f"ratio:                       {ray_rate / plain:7.1%}  (goal >= 95%)")


if __name__ == "__main__":
    main()
