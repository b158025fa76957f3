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

The data is read the way the main job reads it: --source in its own layout (--dataset ilsvrc
or cub) and --background, sharded with Ray Data under --shards_dir (reused when committed there
with the same settings); with no --source, the embedded synthetic dataset. Each (method, seed)
is a Ray Train run of the training engine (--cluster.num_workers workers, 1 by default) whose
best checkpoint by validation is then scored on validation (thresholds) and test by Ray tasks
on the workers. Runs go side by side as far as the cluster's CPUs allow; their checkpoints go
to --cluster.storage_path (default <output_dir>/runs) and a rerun continues them.

With --tune N each trained method gets the same budget: per seed a Ray Tune search (Optuna +
ASHA) of N trials over that method's own settings (CAM: learning rates; BAS: its weights,
warm-up and the authors' variants; bgwsol: its loss weights, map mix and learning rates), the
configured settings as the first trial; the best trial is chosen on validation as the main job
chooses, then read once on test. The table ends with the settings each search chose.

    python flows/compare_methods.py                               # 3 seeds on the synthetic set
    python flows/compare_methods.py --seeds 0 --methods cam eigencam --run.train.epochs 2
    python flows/compare_methods.py --dataset cub --source CUB_200_2011 --background bg/ --seeds 0
    python flows/compare_methods.py --config benchmarks/real_photos.yaml --source ../shared/realdata/animals_cub \\
        --background ../shared/realdata/background --tune 4       # every method tuned, 4 trials each
    ray job submit --working-dir . -- python flows/compare_methods.py --ray.address auto \\
        --cluster.num_workers 4 --cluster.use_gpu --shards_dir s3://bucket/shards \\
        --tracking.tracking_uri http://mlflow:5000

Under `ray job submit` the working directory is a temporary copy: give --output_dir an
absolute path on shared storage, or read the table from the job's log (`ray job logs`) and
from MLflow.
"""

from __future__ import annotations

import sys

from bgwsol.errors import run_entry_point
from bgwsol.workflows.compare import CompareConfig

DEFAULTS = CompareConfig()


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from bgwsol.flow import parse_job, run_job
    from bgwsol.workflows.preflight import compare_problems

    job, _ = parse_job(CompareConfig, DEFAULTS, __doc__, argv)
    return run_job(job, compare_problems(job), run_comparison, log_dir=Path(job.output_dir) / "logs", name="compare",
                   verbose=job.verbose)


def run_comparison(job: CompareConfig) -> str:
    import time

    from bgwsol.workflows.compare import compare, outputs_text  # pulls in torch and Ray

    t0 = time.time()
    comparison = compare(job)
    return (f"\nTest split, {len(job.seeds)} seed(s), checkpoints and thresholds chosen on validation "
            f"({time.time() - t0:.0f} s):\n\n{comparison.markdown()}\n"
            f"{outputs_text(job.output_dir, list(comparison.results), job.seeds[0])}")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "compare_methods"))
