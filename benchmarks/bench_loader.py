"""Loader throughput: bgwsol's TrainStream vs a plain PIL decode + random-resized-crop loop.

Both read the same local shards (ILSVRC-like photos stored with shorter side 256) in one
process, one core, no DataLoader workers: the reference iterates the tars with ``tarfile``,
decodes each JPEG with PIL and applies torchvision's RandomResizedCrop to ``--size`` and a
tensor conversion; TrainStream adds what training needs (resampled shards, shuffle buffer,
JSON metadata, boxes moved with the crop, flips, batching). Printed: images/s of each and
the ratio.

    python benchmarks/bench_loader.py --num-images 1000 --count 5000 --size 224
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tarfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from bench_etl import make_images, plain_loop
from bgwsol.data.shards.etl import ShardConfig
from bgwsol.data.loader import TrainStream


def reference(urls: list[str], size: int, limit: int) -> float:
    """Plain loop: tar -> PIL decode -> RandomResizedCrop -> tensor. Returns images/s."""
    rrc = v2.Compose([v2.RandomResizedCrop(size, scale=(0.4, 1.0), antialias=True), v2.PILToTensor()])
    n, t0 = 0, time.perf_counter()
    while n < limit:
        for url in urls:
            with tarfile.open(url) as tar:
                for m in tar:
                    if m.name.endswith(".jpg"):
                        img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                        rrc(img)
                        n += 1
                        if n >= limit:
                            return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def ours(urls: list[str], size: int, limit: int, batch_size: int, workers: int) -> float:
    steps = limit // batch_size
    stream = TrainStream(urls, None, batch_size=batch_size, bg_ratio=0.0, steps_per_epoch=steps, input_size=size,
                         shuffle_buffer=1000)
    t0 = time.perf_counter()
    n = sum(len(b["label"]) for b in DataLoader(stream, batch_size=None, num_workers=workers))
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=1000, help="distinct images in the shards")
    p.add_argument("--count", type=int, default=5000,
                   help="images pushed through each contender (several passes: TrainStream's 1000-deep "
                        "shuffle buffer reads two samples per output while it fills, as at the start of any epoch)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="alternate the two contenders this many times")
    p.add_argument("--work", type=Path, default=Path("/tmp/bgwsol_bench_loader"))
    args = p.parse_args()
    torch.set_num_threads(1)
    samples = make_images(args.work / "src", args.num_images, (500, 375))
    shard_dir = args.work / "shards"
    if not shard_dir.exists():
        plain_loop(samples, shard_dir, ShardConfig(max_short_side=256), 250)
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.num_images} images "
          f"(stored 341x256), {args.count} through each -> {args.size}px crops, batch {args.batch_size}, 1 process")
    ref_rates, our_rates = [], []
    for _ in range(args.repeats):
        ref_rates.append(reference(urls, args.size, args.count))
        our_rates.append(ours(urls, args.size, args.count, args.batch_size, 0))
    ref, our = max(ref_rates), max(our_rates)
    print(f"plain PIL decode + RandomResizedCrop: {ref:7.1f} img/s (best of {args.repeats})")
    print(f"bgwsol TrainStream:                   {our:7.1f} img/s (best of {args.repeats})")
    print(f"ratio:                                {our / ref:7.1%}  (goal >= 90%)")


if __name__ == "__main__":
    main()
