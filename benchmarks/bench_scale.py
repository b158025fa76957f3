"""ILSVRC at full size, measured in parts (not in the test suite; figures go to BENCHMARKS.md).

``--part listing``: the driver's work before any Ray task, on a generated ILSVRC CLS-LOC tree of
``--classes`` x ``--per-class`` zero-byte training images (1,000 x 1,280 = ILSVRC's 1.28 M),
544 k boxed ones in ``LOC_train_solution.csv`` and a 50 k validation set: read the layout, hold
out validation, make the listing rows, order them into shards. Each step's wall time and the
process's peak RSS. (Zero-byte files: the listing never opens an image.)

``--part plan``: the check of every shard before a fit (``ShardSet.damaged``, what ``plan_data``
runs once per fit) on ``--shards`` shards in a real S3 endpoint (moto on 127.0.0.1): a stat per
shard (the reference, as before) against the sizes from one listing of the prefix.

``--part mixing``: the loader's class mixing at ILSVRC's class count. The same samples are
written as shards in the ETL's order (:func:`~bgwsol.data.shards.etl.shard_order` and
:func:`~bgwsol.data.shards.etl.assign_shards`) and, as the reference, in key order inside each
shard as before; ``TrainStream`` reads each with its default 1,000-deep buffer. Printed:
distinct classes per batch of 256 over the first 100 batches, against independent draws.

``--part etl``: the whole ETL (Ray Data, ``write_shard_set``) on ``--etl-images`` small JPEGs in
``--classes`` classes on this machine's cores: throughput per core. (A task's peak memory
against the shard size: ``benchmarks/bench_etl.py --task-memory``.)

    python benchmarks/bench_scale.py --part listing
    python benchmarks/bench_scale.py --part plan --shards 2500
    python benchmarks/bench_scale.py --part mixing
    python benchmarks/bench_scale.py --part etl --etl-images 100000
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_ilsvrc_tree(root: Path, classes: int, per_class: int, boxed: int, val: int) -> None:
    """An ILSVRC CLS-LOC tree of zero-byte images (made once; reused when its marker is there)."""
    marker = root / f".made-{classes}x{per_class}-{boxed}-{val}"
    if marker.exists():
        return
    wnids = [f"n{10_000_000 + c:08d}" for c in range(classes)]
    (root / "Data/CLS-LOC/val").mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    train_csv = ["ImageId,PredictionString"]
    every = max(1, classes * per_class // max(1, boxed))
    k = 0
    for w in wnids:
        folder = root / "Data/CLS-LOC/train" / w
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{w}_{i}"
            (folder / f"{name}.JPEG").touch()
            if k % every == 0:
                train_csv.append(f"{name},{w} 10 20 200 180 ")
            k += 1
    (root / "LOC_train_solution.csv").write_text("\n".join(train_csv) + "\n")
    val_csv = ["ImageId,PredictionString"]
    for i in range(val):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        (root / f"Data/CLS-LOC/val/{name}.JPEG").touch()
        val_csv.append(f"{name},{wnids[i % classes]} 5 5 100 90 ")
    (root / "LOC_val_solution.csv").write_text("\n".join(val_csv) + "\n")
    marker.touch()


def part_listing(args) -> None:
    from bgwsol.data.shards.etl import assign_shards, dataset_listings, shard_order

    root = args.work / "ilsvrc_tree"
    t0 = time.perf_counter()
    make_ilsvrc_tree(root, args.classes, args.per_class, args.boxed, args.val)
    made = time.perf_counter() - t0
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    listings, classes, _ = dataset_listings("ilsvrc", str(root), 0.15)
    t_list = time.perf_counter() - t0
    rss_list = peak_rss_mib()
    t0 = time.perf_counter()
    shards = {x.name: assign_shards(shard_order(x.rows), args.per_shard) for x in listings}
    t_order = time.perf_counter() - t0
    counts = {name: sum(len(s) for s in v) for name, v in shards.items()}
    print(f"tree of {args.classes} x {args.per_class} train + {args.val} val images "
          f"({'made' if made > 1 else 'reused'} in {made:.0f} s)")
    print("| step | wall | peak RSS of the process |\n|---|---|---|")
    print(f"| read the layout, hold out validation, listing rows ({sum(counts.values()):,} rows: "
          f"{', '.join(f'{k} {v:,}' for k, v in counts.items())}) | {t_list:.1f} s | {rss_list:,.0f} MiB "
          f"(from {rss0:,.0f}) |")
    print(f"| shard order + cut into {sum(len(v) for v in shards.values()):,} shards of <= {args.per_shard} "
          f"| {t_order:.1f} s | {peak_rss_mib():,.0f} MiB |")


def part_plan(args) -> None:
    """Stat ``--shards`` shards on a moto S3 server, one at a time vs in parallel."""
    import boto3

    from bgwsol.data.shards.shardset import FORMAT, MANIFEST_NAME, ShardSet, manifest_bytes

    port = 5600 + os.getpid() % 300
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        for _ in range(100):
            try:
                s3 = boto3.client("s3")
                s3.create_bucket(Bucket="bench")
                break
            except Exception:  # noqa: BLE001 - the server is starting
                time.sleep(0.2)
        entries = []
        for i in range(args.shards):
            name = f"train-{i:06d}.tar"
            s3.put_object(Bucket="bench", Key=f"set/{name}", Body=b"x" * 512)
            entries.append({"name": name, "count": 1, "bytes": 512, "sha256": ""})
        manifest = {"format": FORMAT, "dataset": "bench", "classes": [], "splits": {"train": {
            "count": args.shards, "shards": entries}}}
        s3.put_object(Bucket="bench", Key=f"set/{MANIFEST_NAME}", Body=manifest_bytes(manifest))
        shards = ShardSet.open("s3://bench/set")
        t0 = time.perf_counter()
        missing = sum(shards.location.join(e["name"]).size() is None for e in entries)
        one_by_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        bad = shards.damaged("train")
        listed = time.perf_counter() - t0
        print(f"| check of {args.shards:,} shards on moto S3 (127.0.0.1) | wall |\n|---|---|")
        print(f"| reference: a stat (HEAD) per shard, as before | {one_by_one:.2f} s ({missing} missing) |")
        print(f"| ShardSet.damaged: sizes from one listing ({-(-args.shards // 1000)} LIST pages) | {listed:.2f} s "
              f"({len(bad)} damaged) |")
    finally:
        server.terminate()
        server.wait(10)


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 80, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def part_mixing(args) -> None:
    from torch.utils.data import DataLoader

    from bgwsol.data.loader import TrainStream
    from bgwsol.data.shards.etl import assign_shards, shard_order, write_tar

    jpeg = _tiny_jpeg()
    n = args.classes * args.mix_per_class
    rows = [{"__key__": f"train--n{c:08d}--n{c:08d}_{i}", "label": c} for c in range(args.classes)
            for i in range(args.mix_per_class)]
    by_hash = sorted(rows, key=lambda r: hashlib.sha1(r["__key__"].encode()).hexdigest())
    layouts = {  # the reference: shards cut from the SHA-1 order, members stored in key order (before)
        "reference: key order inside each shard (before)": [
            sorted(by_hash[i:i + args.mix_per_shard], key=lambda r: r["__key__"])
            for i in range(0, n, args.mix_per_shard)],
        "the ETL's order (now)": assign_shards(shard_order(rows), args.mix_per_shard),
    }
    ideal = args.classes * (1 - (1 - 1 / args.classes) ** args.batch)
    print(f"{n:,} samples in {args.classes} classes, shards of {args.mix_per_shard}, batches of {args.batch}, "
          f"TrainStream's default buffer; independent draws give {ideal:.0f} distinct classes per batch")
    print("| shard layout | distinct classes per batch, mean (min) over the first 100 |\n|---|---|")
    for title, shards in layouts.items():
        folder = args.work / "mixing" / str(abs(hash(title)))
        folder.mkdir(parents=True, exist_ok=True)
        urls = []
        for i, shard in enumerate(shards):
            path = folder / f"train-{i:06d}.tar"
            with open(path, "wb") as f:
                write_tar([{"__key__": r["__key__"], "jpg": jpeg,
                            "json": json.dumps({"label": r["label"], "boxes": [[1, 1, 8, 8]]})} for r in shard], f)
            urls.append(str(path))
        stream = TrainStream(urls, None, batch_size=args.batch, bg_ratio=0.0, steps_per_epoch=100, input_size=16,
                             seed=0)
        distinct = [len(set(b["label"].tolist())) for b in DataLoader(stream, batch_size=None)]
        print(f"| {title} | {np.mean(distinct):.0f} ({min(distinct)}) |")


def part_etl(args) -> None:
    """The Ray Data ETL on ``--etl-images`` small JPEGs in ``--classes`` class folders."""
    import ray
    from PIL import Image

    from bgwsol.data.shards.etl import ShardConfig, SplitListing, listing_rows, write_shard_set
    from bgwsol.data.sources.records import Sample

    src = args.work / f"etl_src_{args.classes}"
    rng = np.random.default_rng(0)
    samples = []
    t0 = time.perf_counter()
    for i in range(args.etl_images):
        c = i % args.classes
        path = src / f"n{c:04d}" / f"{i:07d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(noise).resize((160, 120), Image.BILINEAR).save(path, quality=85)
        samples.append(Sample(f"train/n{c:04d}/{i:07d}.jpg", path, c, np.array([[10, 10, 100, 90]]), size=(160, 120)))
    made = time.perf_counter() - t0
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    cfg = ShardConfig(max_short_side=112, samples_per_shard=args.per_shard)
    rows = listing_rows(samples, [f"n{c:04d}" for c in range(args.classes)])
    peak = WorkerPeak()
    t0 = time.perf_counter()
    with peak:
        write_shard_set([SplitListing("train", rows)], str(args.work / "etl_out"), dataset="bench",
                        classes=[f"n{c:04d}" for c in range(args.classes)], cfg=cfg)
    secs = time.perf_counter() - t0
    ray.shutdown()
    print(f"sources: {args.etl_images:,} JPEGs of 160x120 in {args.classes} classes (made in {made:.0f} s); "
          f"{cpus} Ray CPUs, {args.per_shard} samples per shard; driver peak RSS {peak_rss_mib():.0f} MiB")
    print("| images | wall | images/s | per core | peak RSS of one ETL worker process |\n|---|---|---|---|---|")
    print(f"| {args.etl_images:,} | {secs:.0f} s | {args.etl_images / secs:,.0f} | {args.etl_images / secs / cpus:,.0f} "
          f"| {peak.mib:.0f} MiB |")


class WorkerPeak:
    """The largest resident memory of a Ray worker process while it runs an ETL task (its title
    ``ray::MapBatches(write_shards)``), sampled every 0.2 s from /proc: the tasks' own peak,
    not the driver's (other Ray jobs on the machine are not counted)."""

    def __enter__(self):
        import threading

        self.mib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and b"write_shards" in (proc / "cmdline").read_bytes():
                        rss = int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                        self.mib = max(self.mib, rss / 2**20)
                except OSError:
                    continue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["listing", "plan", "mixing", "etl"], required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/bgwsol_bench_scale"))
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=1280)
    p.add_argument("--boxed", type=int, default=544_546, help="training images with a box (ILSVRC: 544,546)")
    p.add_argument("--val", type=int, default=50_000)
    p.add_argument("--per-shard", type=int, default=512, help="samples per shard (1.28 M / 2,500)")
    p.add_argument("--shards", type=int, default=2500)
    p.add_argument("--mix-per-class", type=int, default=64, help="samples per class for --part mixing")
    p.add_argument("--mix-per-shard", type=int, default=12_800,
                   help="samples per shard for --part mixing (512 MiB of ILSVRC at ~40 KB a sample)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--etl-images", type=int, default=100_000)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"command: python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}")
    {"listing": part_listing, "plan": part_plan, "mixing": part_mixing, "etl": part_etl}[args.part](args)


if __name__ == "__main__":
    main()
