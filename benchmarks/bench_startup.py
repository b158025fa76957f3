"""Where a Ray Train run's time goes before and around its training steps (issue #34).

The README's first command trains three Ray Train runs (the CAM baseline and two Tune trials);
a newcomer saw 35 % of that job spent before the runs' first epoch line. This script runs the
demo's baseline run (``flows/train_ilsvrc.py``'s embedded default: tiny CAM on the synthetic
ILSVRC, 2 workers, the demo's schedule) twice in one process on one local Ray, with the
worker-group niceness given, and splits each run's wall time into its parts from rank 0's
epoch records (``bgwsol.training.engine.train``) and the driver's clock:

    worker group   the driver's fit() to the worker process's creation (placement group, spawn)
    process        the worker's creation to its training loop (imports, Ray Train, DDP group)
    build          model, weights, DDP wrap;   resume: checkpoint and MLflow run (none here)
    first batch    the loader's first batch in epoch 1 (shard reads, shuffle buffer)
    epoch 1 extra  epoch 1's steps less a steady epoch's (warm-up of caches and allocators)
    validation     each epoch's validation pass
    after          the last report to fit() returning (controller shutdown, checkpoint upload)

"start-up" is everything but the steady epochs' steps: worker group + process + build +
resume + first batch + epoch 1 extra + the first validation pass.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_startup.py                 # cold, then warm
    PYTHONPATH=. .venv/bin/python benchmarks/bench_startup.py --niceness 0 --hogs 2

Cold is the first run after Ray started (``--drop-caches`` also empties the page cache first,
where the machine allows it: root, no container restriction); warm is the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2, help="runs in a row on the same Ray (the first is cold)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per run (the demo's 5)")
    p.add_argument("--niceness", type=int, default=None,
                   help="Ray's worker niceness (its default: 15); unset: whatever the library sets")
    p.add_argument("--hogs", type=int, default=0, help="nice-0 busy loops beside the runs (a machine doing other work)")
    p.add_argument("--drop-caches", action="store_true", help="empty the page cache before the cold run (root)")
    p.add_argument("--output", default="outputs/bench_startup", help="shards, runs and the JSON lines")
    return p.parse_args(argv)


def breakdown(history: list[dict], wall_s: float) -> dict:
    """The parts of one run's wall time (module docstring) from its epoch records."""
    first = history[0]
    steady = sorted(r["time_train_s"] for r in history[1:]) or [first["time_train_s"]]
    steady_epoch = steady[len(steady) // 2]
    validations = [r.get("time_validation_s", 0.0) for r in history]
    parts = {
        "worker_group_s": first.get("startup_worker_group_s", 0.0),
        "process_s": first.get("startup_process_s", 0.0),
        "build_s": first.get("startup_build_s", 0.0),
        "resume_s": first.get("startup_resume_s", 0.0),
        "first_batch_s": first.get("time_first_batch_s", 0.0),
        "epoch1_extra_s": max(0.0, first["time_train_s"] - first.get("time_first_batch_s", 0.0) - steady_epoch),
        "first_validation_s": validations[0],
    }
    startup = sum(parts.values())
    accounted = startup + steady_epoch * len(history) + sum(validations[1:])
    return {**{k: round(v, 2) for k, v in parts.items()}, "steady_epoch_s": round(steady_epoch, 2),
            "later_validations_s": round(sum(validations[1:]), 2), "wall_s": round(wall_s, 2),
            "startup_s": round(startup, 2), "startup_share": round(startup / wall_s, 3),
            "unaccounted_s": round(wall_s - accounted, 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from bgwsol.config import replace
    from bgwsol.data.plan import RunData
    from bgwsol.ray_init import RayConfig, init_ray
    from bgwsol.training.distributed import fit, run_history
    from bgwsol.workflows.main_job import prepare_shards

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))
    import train_ilsvrc

    out = Path(args.output).resolve()
    cfg = replace(train_ilsvrc.DEFAULTS, **{**train_ilsvrc.DEMO, "shards_dir": str(out / "shards"),
                                             "run.train.epochs": args.epochs})
    run_cfg = replace(cfg.run, **{"method.name": "cam"})
    ray_cfg = RayConfig(worker_niceness=args.niceness) if args.niceness is not None else RayConfig()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        t0 = time.monotonic()
        init_ray(ray_cfg)
        ray_start_s = time.monotonic() - t0
        data = RunData(*prepare_shards(cfg))
        if args.drop_caches:
            try:
                subprocess.run(["sync"], check=True)
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
                print("page cache emptied", flush=True)
            except OSError as exc:
                print(f"page cache not emptied: {exc}", flush=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(args.runs):
            cluster = replace(cfg.cluster, storage_path=str(out / "runs"), run_name=f"startup-{stamp}-{i}")
            t1 = time.monotonic()
            result = fit(run_cfg, data, cluster)
            wall = time.monotonic() - t1
            row = {"run": "cold" if i == 0 else "warm", "ray_start_s": round(ray_start_s, 2) if i == 0 else 0.0,
                   "niceness": args.niceness, "hogs": args.hogs, "epochs": args.epochs,
                   **breakdown(run_history(result), wall)}
            print(json.dumps(row), flush=True)
            with open(out / "startup.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    finally:
        for hog in hogs:
            hog.kill()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.exit(main())
