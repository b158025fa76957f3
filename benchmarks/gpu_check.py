"""The prepared device check: training step, evaluation pass, shard loader and bf16 correctness,
measured side by side in one process, one JSON line per figure on stdout.

Made to run once, within 8 minutes, on a lent GPU machine (one H100/H200, 16 cores, its own
torch/torchvision/timm; no Ray, MLflow or webdataset there): every section that lacks a
dependency prints a line with ``"skipped"`` and the reason instead of failing the run.

    PYTHONPATH=. python benchmarks/gpu_check.py          # on the device (no install there): the full check
    .venv/bin/python benchmarks/gpu_check.py --tiny      # anywhere (CPU): tiny sizes, checks that it runs

The device has torch, torchvision, timm (and so PyYAML and NumPy) but not numba, OpenCV, pyarrow
or webdataset: the ``eval`` and ``loader`` sections then print ``"skipped"`` with the import
that failed, unless those wheels (cp312 manylinux) are carried and installed first.

Figures (``"figure"`` field):

* ``train_step``: images/s of one optimizer step (forward, the method's losses, backward, SGD)
  for each backbone (ResNet-50 with layer4 stride 1, EfficientNet-Lite0) x method (cam, bgwsol)
  x dtype (fp32, bf16 autocast) x memory format (NCHW, channels_last) x eager / torch.compile,
  at the largest batch up to ``--batch`` that fits; ``train_step_ratio`` gives bgwsol / CAM
  time per image (the method's cost; goal at most 1.6x).
* ``eval``: score maps per second through the model, the map upsampling and the CPU-side box
  search of MaxBoxAccV2 (all thresholds, all contours), with the GPU and CPU parts timed apart.
* ``loader``: the shard loader's decode + random-resized-crop throughput on shards this script
  writes, with 0, 8 and 16 loader worker processes (images/s in all and per worker).
* ``bf16_vs_fp32``: the loss of ``--check-steps`` steps from the same weights on the same batch
  under bf16 autocast against fp32 (largest relative difference, tolerance ``--tolerance``),
  and whether every gradient is finite.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from typing import Any, Callable

import torch


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(backbone: str, method_name: str, num_classes: int):
    """(model, method) as training builds them, without the data or tracking stack."""
    from bgwsol.config import MethodConfig, ModelConfig
    from bgwsol.methods import build_method
    from bgwsol.models import build_backbone

    method = build_method(MethodConfig(name=method_name, mask_warmup_epochs=0))
    return method.build_network(build_backbone(backbone), num_classes, ModelConfig()), method


def fake_batch(batch: int, size: int, num_classes: int, device: torch.device, bg_share: float = 0.25):
    """Normalized images ``(B, 3, S, S)`` and labels ``(B,)`` with a quarter of background (-1)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    labels[: int(batch * bg_share)] = -1
    return images.to(device), labels.to(device)


def train_step_fn(model, method, optimizer, dtype: torch.dtype | None, device: torch.device) -> Callable:
    """The training step as the product runs it (``bgwsol.training.engine.compute_losses``: forward under
    autocast, losses in fp32), plus backward and SGD."""
    from bgwsol.training.engine import compute_losses

    def step(images, labels):
        terms = compute_losses(model, method, images, labels, 1, dtype)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return terms["loss"]
    return step


def time_steps(step: Callable, images, labels, device, warmup: int, steps: int) -> float:
    """Seconds per step, after ``warmup`` untimed steps (compilation happens there)."""
    for _ in range(warmup):
        step(images, labels)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    sync(device)
    return (time.perf_counter() - t0) / steps


def largest_batch(run: Callable[[int], float], batch: int, floor: int = 1) -> tuple[int, float]:
    """``(batch, seconds per step)`` for the largest batch from ``batch`` down (halving) that fits."""
    while True:
        try:
            return batch, run(batch)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch // 2 < floor:
                raise
            batch //= 2


def section_train_step(args, device: torch.device) -> None:
    per_image: dict[tuple, float] = {}
    for backbone in args.backbones:
        for method_name in ("cam", "bgwsol"):
            for dtype_name in args.dtypes:
                for channels_last in (False, True):
                    for compiled in ([False, True] if args.compile else [False]):
                        key = (backbone, dtype_name, channels_last, compiled)
                        rec = {"figure": "train_step", "backbone": backbone, "method": method_name,
                               "dtype": dtype_name, "memory_format": "channels_last" if channels_last else "nchw",
                               "compile": compiled, "size": args.size, "device": device_name(device)}
                        try:
                            def run(batch: int) -> float:
                                model, method = build(backbone, method_name, args.num_classes)
                                model = model.to(device).train()
                                fmt = torch.channels_last if channels_last else torch.contiguous_format
                                model = model.to(memory_format=fmt)
                                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                                fwd = torch.compile(model) if compiled else model
                                images, labels = fake_batch(batch, args.size, args.num_classes, device)
                                images = images.contiguous(memory_format=fmt)
                                dtype = torch.bfloat16 if dtype_name == "bf16" else None
                                return time_steps(train_step_fn(fwd, method, opt, dtype, device), images, labels,
                                                  device, args.warmup, args.steps)
                            batch, seconds = largest_batch(run, args.batch)
                            rec.update(batch=batch, images_per_s=round(batch / seconds, 1),
                                       ms_per_step=round(1000 * seconds, 2))
                            per_image[(method_name, *key)] = seconds / batch
                        except Exception as exc:  # noqa: BLE001 - a figure that fails is reported, the rest go on
                            rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                        emit(rec)
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
    for (method_name, *key), cost in per_image.items():
        if method_name != "bgwsol" or ("cam", *key) not in per_image:
            continue
        backbone, dtype_name, channels_last, compiled = key
        emit({"figure": "train_step_ratio", "backbone": backbone, "dtype": dtype_name, "compile": compiled,
              "memory_format": "channels_last" if channels_last else "nchw",
              "bgwsol_over_cam": round(cost / per_image[("cam", *key)], 3), "goal": "<= 1.6"})


def section_eval(args, device: torch.device) -> None:
    try:
        from bgwsol.config import EvalConfig
        from bgwsol.evaluation.evaluator import new_evaluation, upsample_maps
    except ImportError as exc:
        emit({"figure": "eval", "skipped": f"{exc}"})
        return
    import numpy as np

    model, method = build(args.backbones[0], "bgwsol", args.num_classes)
    model = model.to(device).eval()
    cfg = EvalConfig(cam_curve_interval=0.01, scoremap_size=args.size)
    ev = new_evaluation(cfg, with_masks=False)
    images, labels = fake_batch(args.eval_batch, args.size, args.num_classes, device, bg_share=0.0)
    gt = np.array([[args.size // 4, args.size // 4, 3 * args.size // 4, 3 * args.size // 4]])
    gpu_s = cpu_s = 0.0
    count = 0
    with torch.no_grad():
        for i in range(args.eval_batches + 1):
            sync(device)
            t0 = time.perf_counter()
            maps = upsample_maps(method.scoremaps(model(images), labels), args.size).cpu().numpy()
            t1 = time.perf_counter()
            for m in maps:
                ev.boxes.accumulate(m, gt, image_id=str(count))
            t2 = time.perf_counter()
            if i:  # the first batch warms up (cuDNN autotune, numba compile)
                gpu_s, cpu_s, count = gpu_s + t1 - t0, cpu_s + t2 - t1, count + len(maps)
    emit({"figure": "eval", "backbone": args.backbones[0], "batch": args.eval_batch, "maps": count,
          "maps_per_s": round(count / (gpu_s + cpu_s), 1), "model_and_upsample_ms_per_map": round(1000 * gpu_s / count, 3),
          "box_search_ms_per_map": round(1000 * cpu_s / count, 3), "thresholds": len(ev.boxes.thresholds),
          "device": device_name(device)})


def section_loader(args) -> None:
    try:
        from torch.utils.data import DataLoader

        from bgwsol.data.shards.etl import write_tar
        from bgwsol.data.loader import TrainStream
    except ImportError as exc:
        emit({"figure": "loader", "skipped": f"{exc} (carry webdataset and pyarrow wheels to measure the loader)"})
        return
    import io

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        urls = []
        per_shard = max(1, args.loader_images // 4)
        for s in range(4):
            rows = []
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (320, 427, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
                meta = {"label": i % 10, "boxes": [[40, 30, 300, 280]], "size": [427, 320], "orig_size": [427, 320]}
                rows.append({"__key__": f"s{s}-{i:06d}", "jpg": buf.getvalue(), "json": json.dumps(meta)})
            path = os.path.join(d, f"train-{s:06d}.tar")
            with open(path, "wb") as f:
                write_tar(rows, f)
            urls.append(path)
        for workers in args.loader_workers:
            steps = max(1, args.loader_images // args.loader_batch)
            stream = TrainStream(urls, None, batch_size=args.loader_batch, bg_ratio=0.0, steps_per_epoch=steps,
                                 input_size=args.size, seed=0)
            loader = DataLoader(stream, batch_size=None, num_workers=workers,
                                persistent_workers=False, prefetch_factor=4 if workers else None)
            t0, seen = time.perf_counter(), 0
            for batch in loader:
                seen += len(batch["label"])
            secs = time.perf_counter() - t0
            emit({"figure": "loader", "workers": workers, "images": seen, "images_per_s": round(seen / secs, 1),
                  "images_per_s_per_worker": round(seen / secs / max(1, workers), 1), "size": args.size,
                  "cpu_cores": os.cpu_count()})


def section_correctness(args, device: torch.device) -> None:
    model, method = build(args.backbones[0], "bgwsol", args.num_classes)
    model = model.to(device).train()
    images, labels = fake_batch(min(args.batch, 16), args.size, args.num_classes, device)
    losses: dict[str, list[float]] = {}
    finite = True
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.001)
        step = train_step_fn(m, method, opt, dtype, device)
        losses[name] = []
        for _ in range(args.check_steps):
            losses[name].append(float(step(images, labels)))
            finite &= all(torch.isfinite(p.grad).all().item() for p in m.parameters() if p.grad is not None)
    rel = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(losses["fp32"], losses["bf16"]))
    emit({"figure": "bf16_vs_fp32", "backbone": args.backbones[0], "method": "bgwsol", "steps": args.check_steps,
          "loss_fp32": [round(x, 5) for x in losses["fp32"]], "loss_bf16": [round(x, 5) for x in losses["bf16"]],
          "max_rel_diff": round(rel, 5), "tolerance": args.tolerance, "ok": rel <= args.tolerance and finite,
          "finite_gradients": finite, "device": device_name(device)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU-sized run for tests: tiny backbone, 64 px, a few steps")
    p.add_argument("--backbones", nargs="+", default=["resnet50", "efficientnet_lite0"])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--size", type=int, default=224, help="input pixels (square)")
    p.add_argument("--batch", type=int, default=128, help="largest training batch tried (halved until it fits)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per figure")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile figures")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--loader-images", type=int, default=4096)
    p.add_argument("--loader-batch", type=int, default=128)
    p.add_argument("--loader-workers", nargs="+", type=int, default=[0, 8, 16])
    p.add_argument("--check-steps", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.02, help="largest relative loss difference bf16 vs fp32")
    p.add_argument("--sections", nargs="+", default=["correctness", "train_step", "eval", "loader"],
                   choices=["correctness", "train_step", "eval", "loader"])
    args = p.parse_args(argv)
    if args.tiny:
        args.backbones, args.size, args.batch, args.steps, args.warmup = ["tiny"], 64, 4, 1, 1
        args.compile, args.num_classes, args.eval_batch, args.eval_batches = False, 5, 4, 1
        args.loader_images, args.loader_batch, args.loader_workers, args.check_steps = 16, 8, [0], 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    emit({"figure": "machine", "device": device_name(device), "torch": torch.__version__,
          "cpu_cores": os.cpu_count(), "python": platform.python_version()})
    t0 = time.perf_counter()
    sections = {"correctness": lambda: section_correctness(args, device),
                "train_step": lambda: section_train_step(args, device),
                "eval": lambda: section_eval(args, device), "loader": lambda: section_loader(args)}
    for name in args.sections:
        t = time.perf_counter()
        try:
            sections[name]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not cost the device time of the others
            emit({"figure": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
        emit({"figure": "section_time", "section": name, "seconds": round(time.perf_counter() - t, 1)})
    emit({"figure": "total_time", "seconds": round(time.perf_counter() - t0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
