"""The box search beside the model (issue #23): one evaluation pass with the CPU box search of
MaxBoxAccV2 in a helper thread while the model computes the next batch (``overlap=True``, as
the training's validation and the final scoring run it), against the same pass with the search
in the main thread after each batch (``overlap=False``, the reference), in one process,
alternating, on the same shards and checkpoint. Checks that both give the same numbers.

    python benchmarks/bench_eval_overlap.py --checkpoint RUN/checkpoint_*/checkpoint.pt \\
        --shards /tmp/real/shards_cub/cub --split test --repeats 3

Every map variant of the checkpoint's method is scored (bgwsol: main, CAM only, M only), as
the final scoring does. Prints one line per pass and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from bgwsol.checkpoint import load_checkpoint, model_from_state
    from bgwsol.data.loader import normalize
    from bgwsol.data.plan import Worker
    from bgwsol.data.shards.shardset import ShardSet
    from bgwsol.evaluation.evaluator import evaluate
    from bgwsol.evaluation.scoring import eval_loader, map_variants

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt of a run")
    p.add_argument("--shards", required=True, help="the run's dataset shard set (folder or s3://)")
    p.add_argument("--split", default="test")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model, method, cfg = model_from_state(load_checkpoint(args.checkpoint))
    shards = ShardSet.open(args.shards)
    urls = [shards.location.join(s["name"]).url for s in shards.shards(args.split)]
    variants = map_variants(method)
    print(f"{cfg.model.backbone} {cfg.method.name} at {cfg.data.input_size} px, {len(variants)} map variants, "
          f"{shards.count(args.split)} {args.split} images, {torch.get_num_threads()} torch threads, "
          f"{cfg.eval.scoremap_size} px maps, cam_curve_interval {cfg.eval.cam_curve_interval}")
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(args.repeats):
        for overlap in (False, True):
            t0 = time.perf_counter()
            evals = evaluate(model, variants, eval_loader(urls, cfg.data.input_size, Worker()), cfg.eval,
                             preprocess=normalize, overlap=overlap)
            times[overlap].append(time.perf_counter() - t0)
            results[overlap] = {name: ev.summary() for name, ev in evals.items()}
            print(f"  overlap={overlap!s:<5} {times[overlap][-1]:.2f} s", flush=True)
    same = results[False] == results[True]
    ref, new = statistics.median(times[False]), statistics.median(times[True])
    print(f"median: search in the main thread {ref:.2f} s, beside the model {new:.2f} s "
          f"({ref / new:.2f}x); same numbers: {same}")


if __name__ == "__main__":
    main()
