"""ETL throughput and memory: Ray Data shard ETL vs the same work in a plain Python loop.

Throughput (one process, same files): the reference reads each file, runs the ETL's own
``process_image`` (decode -> validate -> shrink -> JPEG encode) and writes the same tar
shards, in a loop on one core; then the Ray Data ETL (``write_shard_set``) runs on a local
Ray with ``--ray-cpus`` CPUs. Printed: images/s of each and the ETL's images/s per Ray CPU
as a share of the loop's.

Memory (``--memory``): the ETL runs in a child process at 1x and ``--scale`` x the input;
the peak proportional set size (PSS, so Ray's shared object store is not double counted)
of the child and every process under it (Ray's GCS, raylet, workers) is sampled every 0.1 s.

Task memory (``--task-memory``): one ETL task's work on one shard of 64 MiB to 1 GiB, each in
a fresh process, reporting its peak RSS: the task as it ships (:func:`write_shard`, samples
streamed into the tar) beside the reference that holds the shard, as the ETL did before
(output lists -> an Arrow table -> Python rows -> the tar). Shards are made of the same 100
large source photos under different keys (the content does not matter for memory).

    python benchmarks/bench_etl.py --num-images 600 --ray-cpus 2
    python benchmarks/bench_etl.py --memory --num-images 300 --scale 10
    python benchmarks/bench_etl.py --task-memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bgwsol.data.shards.etl import (ShardConfig, ShardTarget, SplitListing, encode_row, listing_rows, read_ahead,
                                   write_shard, write_shard_set, write_tar)
from bgwsol.data.storage import Location
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


def held_shard(rows: list[dict], cfg: ShardConfig, out: Path) -> None:
    """The reference: the ETL task before streaming (the shard's samples in lists, then an Arrow
    table, then Python rows, then the tar)."""
    import pyarrow as pa

    cols: dict[str, list] = {"__key__": [], "jpg": [], "json": [], "mask.png": []}
    for row, fetch in read_ahead(rows, cfg.read_ahead):
        members, _, _ = encode_row(row, fetch, cfg)
        cols["__key__"].append(row["__key__"])
        cols["jpg"].append(members["jpg"])
        cols["json"].append(members["json"].decode())
        cols["mask.png"].append(None)
    table = pa.table({"__key__": pa.array(cols["__key__"], pa.string()), "jpg": pa.array(cols["jpg"], pa.binary()),
                      "json": pa.array(cols["json"], pa.string()), "mask.png": pa.array(cols["mask.png"], pa.binary())})
    with open(out, "wb") as f:
        write_tar(table.to_pylist(), f)


TASK_CFG = ShardConfig(max_short_side=1200, jpeg_quality=90)  # large photos kept large: ~0.3 MB per sample


def task_rows(work: Path, mib: int) -> list[dict]:
    """Listing rows of one shard of about ``mib`` MiB: 100 source photos repeated under new keys."""
    sources = make_images(work / "large", 100, (1600, 1200))
    per_sample = np.mean([len(encode_row(r, f, TASK_CFG)[0]["jpg"]) for r, f in read_ahead(
        listing_rows(sources[:8], [f"c{i}" for i in range(10)]), 4)])
    n = int(mib * 2**20 / per_sample)
    samples = [Sample(f"bench/{i:07d}.JPEG", sources[i % 100].path, i % 10, sources[i % 100].boxes, size=(1600, 1200))
               for i in range(n)]
    return listing_rows(samples, [f"c{i}" for i in range(10)])


def task_child(work: Path, mib: int, mode: str) -> None:
    rows = task_rows(work, mib)
    out = work / "task"
    out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if mode == "streamed":
        entry = write_shard(rows, 0, TASK_CFG, ShardTarget.of(Location.parse(str(out)), mode))
        size = entry["bytes"]
    else:
        held_shard(rows, TASK_CFG, out / "held.tar")
        size = (out / "held.tar").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "mib": mib, "samples": len(rows), "shard_mib": size / 2**20,
                      "rss_before_mib": before / 1024, "peak_rss_mib": peak / 1024,
                      "seconds": time.perf_counter() - t0}))


def task_memory_table(work: Path, sizes: list[int]) -> None:
    print("| shard | samples | task as it ships (streamed): peak RSS | reference (holds the shard): peak RSS |")
    print("|---|---|---|---|")
    for mib in sizes:
        got = {}
        for mode in ("streamed", "held"):
            done = subprocess.run([sys.executable, __file__, "--task-child", mode, "--shard-mib", str(mib),
                                   "--work", str(work)], capture_output=True, text=True, check=True)
            got[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        s, h = got["streamed"], got["held"]
        print(f"| {s['shard_mib']:.0f} MiB | {s['samples']:,} | {s['peak_rss_mib']:,.0f} MiB ({s['seconds']:.0f} s) "
              f"| {h['peak_rss_mib']:,.0f} MiB ({h['seconds']:.0f} s) |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=600)
    p.add_argument("--size", type=int, nargs=2, default=[500, 375], help="source image width height (ILSVRC-like)")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--per-shard", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("/tmp/bgwsol_bench_etl"))
    p.add_argument("--memory", action="store_true", help="measure peak memory at 1x and --scale x")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--task-memory", action="store_true", help="one task's peak RSS, streamed vs held, per shard size")
    p.add_argument("--shard-mib", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--task-child", choices=["streamed", "held"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.task_child:
        task_child(args.work, args.shard_mib[0], args.task_child)
        return
    if args.task_memory:
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"1600x1200 source photos, shorter side <= {TASK_CFG.max_short_side}, read_ahead {TASK_CFG.read_ahead}")
        task_memory_table(args.work, args.shard_mib)
        return
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
