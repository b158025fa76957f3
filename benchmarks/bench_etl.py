"""ETL throughput and memory: Ray Data shard ETL vs the same work in a plain Python loop.

Throughput (one process, same files): the reference reads each file, runs the ETL's own
``process_image`` (decode -> validate -> shrink -> JPEG encode) and writes the same tar
shards, in a loop on one core; then the Ray Data ETL (``write_shard_set``) runs on a local
Ray with ``--ray-cpus`` CPUs. Printed: images/s of each and the ETL's images/s per Ray CPU
as a share of the loop's.

Memory (``--memory``): the ETL runs in a child process at 1x and ``--scale`` x the input;
the peak proportional set size (PSS, so Ray's shared object store is not double counted)
of the child and every process under it (Ray's GCS, raylet, workers) is sampled every 0.1 s.

    python benchmarks/bench_etl.py --num-images 600 --ray-cpus 2
    python benchmarks/bench_etl.py --memory --num-images 300 --scale 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bgwsol.data.shards.etl import ShardConfig, SplitListing, listing_rows, write_shard_set, write_tar
from bgwsol.data.shards.imageproc import process_image
from bgwsol.data.sources.records import Sample


def photo_like(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colour fields plus fine noise, so JPEG sizes and decode costs resemble photos."""
    low = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_images(folder: Path, n: int, size: tuple[int, int], classes: int = 10) -> list[Sample]:
    """``n`` ILSVRC-sized JPEGs (cached in ``folder``) with one box each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = folder / f"img_{i:06d}.JPEG"
        w, h = size
        if not path.exists():
            photo_like(rng, w, h).save(path, quality=90)
        x0, y0 = (i * 7) % (w // 2), (i * 5) % (h // 2)
        samples.append(Sample(f"bench/img_{i:06d}.JPEG", path, i % classes,
                              np.array([[x0, y0, x0 + w // 3, y0 + h // 3]]), size=(w, h), source="bench"))
    return samples


def plain_loop(samples: list[Sample], out: Path, cfg: ShardConfig, per_shard: int) -> float:
    """Read, process, tar: one core, no Ray. Returns seconds."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for s0 in range(0, len(samples), per_shard):
        rows = []
        for s in samples[s0:s0 + per_shard]:
            res = process_image(s.path.read_bytes(), s.boxes, max_short_side=cfg.max_short_side,
                                jpeg_quality=cfg.jpeg_quality)
            rows.append({"__key__": f"k{len(rows)}", "jpg": res.jpeg,
                         "json": json.dumps({"label": s.label, "boxes": res.boxes.tolist()})})
        with open(out / f"train-{s0 // per_shard:06d}.tar", "wb") as f:
            write_tar(rows, f)
    return time.perf_counter() - t0


def parallel_plain_loops(samples: list[Sample], out: Path, cfg: ShardConfig, per_shard: int, procs: int) -> float:
    """``procs`` plain loops in parallel processes (no Ray) over disjoint halves: the same
    hardware contention as ``procs`` Ray workers, without Ray. Returns seconds."""
    from concurrent.futures import ProcessPoolExecutor

    chunks = [samples[i::procs] for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(plain_loop, [c[:per_shard] for c in chunks], [out / f"p{i}" for i in range(procs)],
                      [cfg] * procs, [per_shard] * procs))  # start and warm the processes
        t0 = time.perf_counter()
        list(pool.map(plain_loop, chunks, [out / f"q{i}" for i in range(procs)], [cfg] * procs, [per_shard] * procs))
        return time.perf_counter() - t0


def ray_etl(samples: list[Sample], out: Path, cfg: ShardConfig) -> float:
    listing = [SplitListing("train", listing_rows(samples, [f"c{i}" for i in range(10)]))]
    t0 = time.perf_counter()
    write_shard_set(listing, str(out), dataset="bench", classes=[f"c{i}" for i in range(10)], cfg=cfg)
    return time.perf_counter() - t0


def pss_tree_kib(root: int) -> int:
    """Sum of PSS (KiB) over ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def measure_memory(n: int, size: tuple[int, int], ray_cpus: int, work: Path) -> tuple[float, float]:
    """Run the ETL over ``n`` images in a child process; returns (peak PSS MiB, seconds)."""
    cmd = [sys.executable, __file__, "--child", "--num-images", str(n), "--ray-cpus", str(ray_cpus),
           "--work", str(work), "--size", str(size[0]), str(size[1])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    peak = 0
    while proc.poll() is None:
        peak = max(peak, pss_tree_kib(proc.pid))
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"child failed with {proc.returncode}")
    return peak / 1024, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=600)
    p.add_argument("--size", type=int, nargs=2, default=[500, 375], help="source image width height (ILSVRC-like)")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--per-shard", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("/tmp/bgwsol_bench_etl"))
    p.add_argument("--memory", action="store_true", help="measure peak memory at 1x and --scale x")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    size = tuple(args.size)
    cfg = ShardConfig(max_short_side=256, samples_per_shard=args.per_shard)

    if args.child:
        import ray

        samples = make_images(args.work / "src", args.num_images, size)
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        ray_etl(samples, args.work / f"out_{args.num_images}", cfg)
        ray.shutdown()
        return

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"images {size[0]}x{size[1]} -> shorter side {cfg.max_short_side}, {args.per_shard} per shard")
    if args.memory:
        make_images(args.work / "src", args.num_images * args.scale, size)
        for n in (args.num_images, args.num_images * args.scale):
            mib, secs = measure_memory(n, size, args.ray_cpus, args.work)
            print(f"ETL of {n:>6} images: peak PSS of all processes {mib:7.0f} MiB, {secs:5.1f} s (Ray CPUs {args.ray_cpus})")
        return

    import ray

    samples = make_images(args.work / "src", args.num_images, size)
    for s in samples:  # warm the page cache for both contenders
        s.path.read_bytes()
    loop_s = plain_loop(samples, args.work / "loop", cfg, args.per_shard)
    par_s = parallel_plain_loops(samples, args.work / "par", cfg, args.per_shard, args.ray_cpus)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    ray_etl(samples[: 2 * args.per_shard], args.work / "warm", cfg)  # start and warm the worker processes
    etl_s = ray_etl(samples, args.work / "ray", cfg)
    n = len(samples)
    loop_rate, etl_rate = n / loop_s, n / etl_s
    print(f"plain loop (1 core):          {loop_rate:7.1f} img/s")
    print(f"{args.ray_cpus} plain loops in parallel:     {n / par_s:7.1f} img/s = {n / par_s / args.ray_cpus:6.1f} img/s per process (no Ray)")
    print(f"Ray Data ETL ({args.ray_cpus} Ray CPUs):     {etl_rate:7.1f} img/s = {etl_rate / args.ray_cpus:6.1f} img/s per Ray CPU")
    print(f"ETL per core / plain loop:    {etl_rate / args.ray_cpus / loop_rate:7.1%}  (goal >= 80%)")
    print(f"ETL / parallel plain loops:   {etl_rate / (n / par_s):7.1%}  (Ray's own overhead)")


if __name__ == "__main__":
    main()
