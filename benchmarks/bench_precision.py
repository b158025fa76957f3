"""Inference paths against the fp32 NCHW reference on real photos (issue #25), in one process.

With one trained checkpoint the same work is done three ways: the reference (fp32, NCHW, as
before issue #25), ``fp32`` (channels_last: the default of ``bgwsol localize``, ``bgwsol serve``
and every evaluation pass) and ``bf16`` (channels_last + bf16 autocast, where torch reports
native bf16):

* ``bgwsol localize`` on every test photo of a CUB-layout folder (``--cub``: the photos with
  ``is_training_image`` 0, decoded at full size): whether the class is the same, how far the
  boxes' corners move in the photo's pixels, how far the heatmaps move; images/s of each
  (batches of ``--batch``, after a warm-up batch);
* the evaluation pass on a shard set's split (``--shards``, ``--split``; every map variant of
  the checkpoint's method): MaxBoxAccV2, Top-1 Loc, PxAP and mask mIoU; seconds of each.

Goals (issue #25): the same class on every photo, boxes within 1 px on at least 98 % of them,
MaxBoxAccV2 within 0.5 points.

    PYTHONPATH=. python benchmarks/bench_precision.py --checkpoint RUN/checkpoint_*/checkpoint.pt \\
        --cub ../shared/realdata/animals_cub --shards /tmp/real/shards_cub/cub --split test
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def cub_test_photos(root: Path) -> list[Path]:
    """The test photos of a CUB-layout folder (``images.txt`` + ``train_test_split.txt``)."""
    paths = dict(line.split(maxsplit=1) for line in (root / "images.txt").read_text().splitlines() if line.strip())
    split = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines() if line.strip())
    return [root / "images" / paths[i].strip() for i in sorted(paths, key=int) if split.get(i) == "0"]


def localize_all(localizer, photos: list, batch: int) -> tuple[list, float]:
    """Every photo through ``localizer.batch`` in batches; ``(results, seconds)``."""
    t0, found = time.perf_counter(), []
    for start in range(0, len(photos), batch):
        found += localizer.batch(photos[start:start + batch])
    return found, time.perf_counter() - t0


def main() -> None:
    from PIL import Image

    from bgwsol.checkpoint import load_checkpoint, model_from_state
    from bgwsol.data.images import read_image_file
    from bgwsol.data.loader import normalize
    from bgwsol.data.plan import Worker
    from bgwsol.data.shards.shardset import ShardSet
    from bgwsol.evaluation.evaluator import evaluate
    from bgwsol.evaluation.scoring import eval_loader, map_variants
    from bgwsol.precision import bf16_native, inference_precision, reference_precision
    from bgwsol.serving.localizer import Localizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt of a run")
    p.add_argument("--cub", required=True, help="CUB-layout folder whose test photos are localized")
    p.add_argument("--shards", required=True, help="the run's dataset shard set (folder or s3://)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    state = load_checkpoint(args.checkpoint)
    paths = {"reference": reference_precision(), "fp32": inference_precision("cpu", "fp32")}
    if bf16_native("cpu"):
        paths["bf16"] = inference_precision("cpu", "bf16")
    files = cub_test_photos(Path(args.cub))
    photos: list[Image.Image] = [read_image_file(f) for f in files]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; native bf16: {bf16_native('cpu')}; {len(photos)} test photos")

    found = {}
    for name, precision in paths.items():
        localizer = Localizer(state, precision=precision)
        localize_all(localizer, photos[:args.batch], args.batch)  # warm-up
        found[name], seconds = localize_all(localizer, photos, args.batch)
        print(f"localize {name:<9} ({precision.describe()}): {len(photos) / seconds:5.1f} img/s")
    for name in paths:
        if name == "reference":
            continue
        pairs = list(zip(found["reference"], found[name]))
        same_class = sum(a.label == b.label for a, b in pairs)
        moved = np.array([max(abs(x - y) for x, y in zip(a.box, b.box)) for a, b in pairs])
        heat = np.array([float(np.abs(a.heatmap - b.heatmap).mean()) for a, b in pairs])
        print(f"  {name} against the reference: same class {same_class}/{len(pairs)}; boxes within 1 px "
              f"{(moved <= 1).mean():.1%} (unmoved {(moved == 0).mean():.1%}, median move {np.median(moved):.0f} px, "
              f"largest {moved.max()} px); heatmap mean |diff| {heat.mean():.4f} (largest {heat.max():.4f})")

    _, method, cfg = model_from_state(state)
    shards = ShardSet.open(args.shards)
    urls = [shards.location.join(s["name"]).url for s in shards.shards(args.split)]
    variants = map_variants(method)
    metrics = {}
    for name, precision in paths.items():
        model, _, _ = model_from_state(state)  # a fresh model: channels_last paths convert it in place
        t0 = time.perf_counter()
        evals = evaluate(model, variants, eval_loader(urls, cfg.data.input_size, Worker()), cfg.eval,
                         preprocess=normalize, precision=precision)
        seconds = time.perf_counter() - t0
        metrics[name] = {variant: ev.summary() for variant, ev in evals.items()}
        print(f"evaluate {name:<9} {shards.count(args.split)} {args.split} images in {seconds:.1f} s")
    for variant in variants:
        ref = metrics["reference"][variant]
        for name in paths:
            if name == "reference":
                continue
            got = metrics[name][variant]
            parts = [f"{key} {ref[key]:.2f} -> {got[key]:.2f} ({got[key] - ref[key]:+.2f})"
                     for key in ("maxboxacc_v2", "top1_loc", "pxap", "mask_miou") if key in ref]
            print(f"  {variant:<10} {name}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
