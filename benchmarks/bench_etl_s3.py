"""ETL from a source in a bucket: the Ray Data ETL reading ahead (``--etl.read_ahead``) vs one file at a time.

A moto S3 server on 127.0.0.1 holds ``--num-images`` ILSVRC-sized JPEGs; the same
``write_shard_set`` runs over them on a local Ray with ``--ray-cpus`` CPUs, once with
``read_ahead=1`` (each task fetches the next image only after processing the previous one)
and once with ``read_ahead=16``, alternating ``--repeats`` times, shards written to a local
folder. Printed: images/s of each (best run) and the ratio, plus the mean GET latency.

moto answers from this machine's own cores in ~10 ms of CPU work, so it measures contention
more than latency. ``--latency-ms`` puts a TCP relay in front of moto that holds each request
for that long before passing it on (a sleep, no CPU), like the round trip to a remote store;
AWS S3's first byte typically takes tens of milliseconds. No cloud is reachable from here, so
figures against AWS itself are not measured.

    python benchmarks/bench_etl_s3.py --num-images 400 --ray-cpus 2 --latency-ms 30
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from bench_etl import make_images
from bgwsol.data.shards.etl import ShardConfig, SplitListing, listing_rows, write_shard_set
from bgwsol.data.sources.source_tree import read_source


def start_moto() -> str:
    """A moto S3 server on a free loopback port, exported through the AWS variables (before Ray starts)."""
    import logging

    from moto.server import ThreadedMotoServer

    from bgwsol.tracking.local_server import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    return os.environ["AWS_ENDPOINT_URL"]


def delaying_relay(upstream_port: int, latency_s: float) -> int:
    """A loopback TCP relay to ``upstream_port`` that holds every client->server chunk for ``latency_s``."""
    import socket
    import threading

    from bgwsol.tracking.local_server import free_port

    def pipe(src, dst, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve(listener) -> None:
        while True:
            client, _ = listener.accept()
            server = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=pipe, args=(client, server, latency_s), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client, 0.0), daemon=True).start()

    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    return port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=400)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request (TCP relay before moto)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bgwsol_bench_etl_s3"))
    args = p.parse_args()

    import ray

    from bgwsol.data.storage import boto3_client

    endpoint = start_moto()
    samples = make_images(args.work / "src", args.num_images, (500, 375))
    client = boto3_client()
    client.create_bucket(Bucket="raw")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: client.put_object(Bucket="raw", Key=f"img/{s.path.name}", Body=s.path.read_bytes()),
                      samples))
    remote = [replace(s, path=f"s3://raw/img/{s.path.name}") for s in samples]
    if args.latency_ms:  # uploads went straight to moto; reads go through the relay
        relay = delaying_relay(int(endpoint.rsplit(":", 1)[1]), args.latency_ms / 1000)
        endpoint = os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{relay}"
    t0 = time.perf_counter()
    for s in remote[:50]:
        read_source(s.path)
    get_ms = (time.perf_counter() - t0) / 50 * 1000

    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    classes = [f"c{i}" for i in range(10)]
    listing = [SplitListing("train", listing_rows(remote, classes))]
    base = ShardConfig(max_short_side=256, samples_per_shard=max(1, args.num_images // (2 * args.ray_cpus)))
    rates: dict[int, list[float]] = {1: [], 16: []}
    for _ in range(args.repeats):
        for depth in rates:
            out = args.work / f"out{depth}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            write_shard_set(listing, str(out), dataset="bench", classes=classes, cfg=replace(base, read_ahead=depth))
            rates[depth].append(args.num_images / (time.perf_counter() - t0))
    ray.shutdown()
    one, ahead = max(rates[1]), max(rates[16])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Ray CPUs: {args.ray_cpus}; "
          f"{args.num_images} JPEGs 500x375 on moto S3 at {endpoint} (added latency {args.latency_ms:g} ms; "
          f"mean GET {get_ms:.1f} ms)")
    print(f"ETL, read_ahead=1:  {one:7.1f} img/s (best of {args.repeats})")
    print(f"ETL, read_ahead=16: {ahead:7.1f} img/s (best of {args.repeats})")
    print(f"ratio:              {ahead / one:7.2f}x")


if __name__ == "__main__":
    main()
