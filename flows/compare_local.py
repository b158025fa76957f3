"""Method comparison in one process (no Ray): train WSOL methods with several seeds, print the test table.

The benchmark behind BENCHMARKS.md's method table (the main job, with Ray, is
``flows/train_ilsvrc.py``).

With no ``--data.root`` it first generates the synthetic dataset in the real ILSVRC layout
(objects whose class is told only by a small mark, plus a background set), then trains
each method with each seed, chooses checkpoint and thresholds on the validation split,
reads the test split once, and prints one table. Every run writes its resolved
``config.yaml``, checkpoints, ``history.jsonl`` (per-term losses), ``results.json`` and
``overlays_test.png`` under ``--output_dir``.

    python flows/compare_local.py                       # the embedded default
    python flows/compare_local.py --seeds 0 1 2 --output_dir outputs/bench3
    python flows/compare_local.py --data.root /data/ILSVRC --data.background /data/bg \\
        --model.backbone resnet50 --data.input_size 224 --model.weights resnet50.pth
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bgwsol.config import RunConfig, add_config_args, config_from_args, replace
from bgwsol.data.synthetic import SyntheticConfig, generate

DEFAULTS = RunConfig(output_dir="outputs/compare_local")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["cam", "bgwsol"], help="methods to train (default: cam bgwsol)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds per method (default: 0)")
    p.add_argument("--synthetic-dir", type=Path, default=Path("data/synthetic"),
                   help="where the synthetic dataset is generated when --data.root is empty (default: data/synthetic)")
    p.add_argument("--synthetic-train-per-class", type=int, default=SyntheticConfig.train_per_class,
                   help=f"synthetic train images per class (default: {SyntheticConfig.train_per_class})")
    add_config_args(p, RunConfig, DEFAULTS)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    cfg = config_from_args(RunConfig, args, DEFAULTS)
    if not cfg.data.root:
        syn = SyntheticConfig(train_per_class=args.synthetic_train_per_class)
        paths = generate(args.synthetic_dir, syn)
        cfg = replace(cfg, **{"data.root": str(paths.ilsvrc), "data.background": str(paths.background)})
        logging.info("synthetic ILSVRC at %s, background set at %s", paths.ilsvrc, paths.background)
    from bgwsol.compare import compare  # after logging is configured; pulls in torch

    t0 = time.time()
    comparison = compare(cfg, args.methods, args.seeds)
    out = Path(cfg.output_dir)
    print(f"\nTest split, thresholds and checkpoints chosen on validation ({time.time() - t0:.0f} s):\n")
    print(comparison.markdown())
    print(f"\nOutputs: {out.resolve()}")
    print(f"  table:    {out / 'comparison.md'}")
    for method in args.methods:
        print(f"  {method}: {out / f'{method}-seed{args.seeds[0]}'}/{{results.json,history.jsonl,overlays_test.png,config.yaml}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
