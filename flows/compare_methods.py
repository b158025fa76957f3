"""Seed papers' methods in one harness: CAM, Eigen-CAM, BAS and bgwsol, one comparison table.

Each trained method (cam, bas, bgwsol) runs once per seed on the same data, splits,
backbone, schedule and evaluator; Eigen-CAM is post-hoc and is scored on the CAM run of the
same seed (no training of its own). Every run chooses its checkpoint and its box thresholds
on the validation split and reads the test split once. The table (mean ± std over seeds of
MaxBoxAccV2, BoxAccV2 at the validation thresholds, IoU70, GT-known / Top-1 / Top-5 Loc,
Top-1 classification and PxAP) is printed and written to ``<output_dir>/comparison.md`` and
``comparison.json``, with a line saying whether bgwsol is at or above every other method on
MaxBoxAccV2. With ``--tracking.tracking_uri`` (or MLFLOW_TRACKING_URI) it also goes to one
MLflow parent run with a child run per method.

With no ``--data.root`` the synthetic dataset (ILSVRC layout plus a background set) is
generated first, as in flows/compare_local.py.

    python flows/compare_methods.py                               # 3 seeds, in this process
    python flows/compare_methods.py --seeds 0 --methods cam eigencam --train.epochs 2
    python flows/compare_methods.py --ray local --cpus-per-run 1  # runs as tasks of a local Ray
    ray job submit --working-dir . -- python flows/compare_methods.py --ray auto --cpus-per-run 4 \\
        --tracking.tracking_uri http://mlflow:5000

On a cluster every (method, seed) run is a Ray task; the synthetic data is regenerated on a
node that lacks it (real data must be at the same path on every node), and per-run files
land on the node that ran them unless --output_dir is shared. Under `ray job submit` the
working directory is a temporary copy: give --output_dir an absolute path on shared storage,
or read the table from the job's log (`ray job logs`) and from MLflow.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bgwsol.config import RunConfig, add_config_args, config_from_args, replace
from bgwsol.data.sources.synthetic import SyntheticConfig, generate
from bgwsol.tracking.runs import TrackingConfig

DEFAULTS = RunConfig(output_dir="outputs/compare_methods")
METHODS = ["cam", "eigencam", "bas", "bgwsol"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=METHODS,
                   help=f"methods to compare; post-hoc ones (eigencam) are scored on their source's runs "
                        f"(default: {' '.join(METHODS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per method (default: 0 1 2)")
    p.add_argument("--synthetic-dir", type=Path, default=Path("data/synthetic"),
                   help="where the synthetic dataset is generated when --data.root is empty (default: data/synthetic)")
    p.add_argument("--synthetic-train-per-class", type=int, default=SyntheticConfig.train_per_class,
                   help=f"synthetic train images per class (default: {SyntheticConfig.train_per_class})")
    p.add_argument("--ray", default="", metavar="WHERE",
                   help="run each (method, seed) as a Ray task: 'local' starts a local Ray, 'auto' joins the "
                        "cluster (as under `ray job submit`), or a Ray address; empty: all in this process (default)")
    p.add_argument("--cpus-per-run", type=float, default=1.0,
                   help="CPUs each Ray task reserves; torch uses as many threads (default: 1)")
    track = p.add_argument_group("tracking options")
    track.add_argument("--tracking.tracking_uri", dest="tracking_uri", default="",
                       help=TrackingConfig.__dataclass_fields__["tracking_uri"].metadata["help"])
    track.add_argument("--tracking.experiment", dest="experiment", default=TrackingConfig.experiment,
                       help=f"MLflow experiment name (default: {TrackingConfig.experiment})")
    add_config_args(p, RunConfig, DEFAULTS)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    cfg = config_from_args(RunConfig, args, DEFAULTS)
    from bgwsol.workflows.preflight import methods_problems, report, run_config_problems

    problems = run_config_problems(cfg) + methods_problems(args.methods, cfg)
    if not args.seeds:
        problems.append("--seeds: give at least one seed")
    if problems:
        return report(problems)
    synthetic = None
    if not cfg.data.root:
        syn = SyntheticConfig(train_per_class=args.synthetic_train_per_class)
        paths = generate(args.synthetic_dir, syn)
        synthetic = (args.synthetic_dir, syn)
        cfg = replace(cfg, **{"data.root": str(paths.ilsvrc), "data.background": str(paths.background)})
        logging.info("synthetic ILSVRC at %s, background set at %s", paths.ilsvrc, paths.background)
    from bgwsol.workflows.compare import compare, outputs_text  # after logging is configured; pulls in torch

    tracking = TrackingConfig(tracking_uri=args.tracking_uri, experiment=args.experiment)
    t0 = time.time()
    comparison = compare(cfg, args.methods, args.seeds, ray=args.ray, cpus_per_run=args.cpus_per_run,
                         synthetic=synthetic, tracking=tracking)
    print(f"\nTest split, {len(args.seeds)} seed(s), checkpoints and thresholds chosen on validation "
          f"({time.time() - t0:.0f} s):\n")
    print(comparison.markdown())
    print(outputs_text(cfg.output_dir, list(comparison.results), args.seeds[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
