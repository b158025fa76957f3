"""Evaluator speed: bgwsol's box metric vs the per-threshold findContours loop (wsolevaluation's algorithm).

Both run in this process on the same maps and must give identical numbers; the script
prints both timings and the speed-up. Maps are CAM-like: a few Gaussian blobs plus noise
at 14 x 14, bicubic-upsampled to 224 x 224 and min-max normalized, as a WSOL model's maps are.

    python benchmarks/bench_evaluator.py --num-maps 300 --interval 0.001 --multi-contour
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np

from bgwsol.evaluation.scoremaps import best_iou_per_threshold, best_iou_per_threshold_reference
from bgwsol.evaluation.metrics import cam_thresholds


def cam_like_maps(n: int, size: int = 224, low: int = 14, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` float32 maps in [0, 1] ``(size, size)`` and one or two GT boxes each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:low, 0:low].astype(np.float32)
    maps, boxes = [], []
    for _ in range(n):
        m = rng.normal(0, 0.08, size=(low, low)).astype(np.float32)
        gts = []
        for _k in range(rng.integers(1, 3)):
            cx, cy = rng.uniform(2, low - 2, size=2)
            sx, sy = rng.uniform(0.8, 3.5, size=2)
            m += rng.uniform(0.5, 1.0) * np.exp(-((xx - cx) ** 2 / (2 * sx**2) + (yy - cy) ** 2 / (2 * sy**2)))
            s = size / low
            gts.append([max(0, (cx - 2 * sx) * s), max(0, (cy - 2 * sy) * s),
                        min(size - 1, (cx + 2 * sx) * s), min(size - 1, (cy + 2 * sy) * s)])
        up = cv2.resize(m, (size, size), interpolation=cv2.INTER_CUBIC)
        up = (up - up.min()) / (up.max() - up.min())
        maps.append(up.astype(np.float32))
        boxes.append(np.asarray(gts, dtype=np.int64))
    return maps, boxes


def run(fn, maps, boxes, thresholds, multi_contour) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    best = np.stack([fn(m, b, thresholds, multi_contour) for m, b in zip(maps, boxes)])
    return time.perf_counter() - t0, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-maps", type=int, default=300)
    p.add_argument("--interval", type=float, default=0.001, help="cam_curve_interval (1,000 thresholds at 0.001)")
    p.add_argument("--multi-contour", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    cv2.setNumThreads(1)  # both sides single-threaded: the comparison is algorithmic
    maps, boxes = cam_like_maps(args.num_maps)
    thresholds = cam_thresholds(args.interval)
    t0 = time.perf_counter()
    best_iou_per_threshold(maps[0], boxes[0], thresholds, args.multi_contour)  # loads numba's compiled code
    t_warm = time.perf_counter() - t0
    t_fast, fast = run(best_iou_per_threshold, maps, boxes, thresholds, args.multi_contour)
    t_ref, ref = run(best_iou_per_threshold_reference, maps, boxes, thresholds, args.multi_contour)
    same = np.array_equal(fast, ref)
    acc = {iou: float((ref >= iou / 100).mean(0).max() * 100) for iou in (30, 50, 70)}
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, opencv {cv2.__version__}")
    print(f"maps: {args.num_maps} x 224x224, thresholds: {len(thresholds)}, contours: {'all' if args.multi_contour else 'largest'}")
    print(f"MaxBoxAcc@30/50/70 (both): {acc[30]:.2f} / {acc[50]:.2f} / {acc[70]:.2f}; identical per-threshold IoUs: {same}")
    print(f"reference (findContours per threshold): {t_ref:8.2f} s  ({t_ref / args.num_maps * 1e3:7.1f} ms/map)")
    print(f"bgwsol (per distinct binarization):     {t_fast:8.2f} s  ({t_fast / args.num_maps * 1e3:7.1f} ms/map)")
    print(f"speed-up: {t_ref / t_fast:.1f}x  (one-time load of the compiled union-find, not included: {t_warm:.2f} s)")
    if not same:
        raise SystemExit("results differ")


if __name__ == "__main__":
    main()
