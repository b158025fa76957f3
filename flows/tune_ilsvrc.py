"""Ray Tune over bgwsol's loss weights, map mix and learning rate on a shard set; registers the best.

Each trial is a 2-worker (``--cluster.num_workers``) Ray Train run; Optuna proposes (the
configured settings first), ASHA stops weak trials after ``--search.grace_period`` epochs. Every
trial is a nested MLflow run under one parent run; the best trial's best checkpoint is scored as
the main job scores it (thresholds on validation, the test split once) and registered as
``--model_name`` with its validation threshold, and ``champion`` moves to it only if it beats
the current champion. The search is named by what it depends on (the shards, the settings, the
search space): rerun with the same ones to continue a stopped search; other ones start a new one.

    python flows/tune_ilsvrc.py --shards s3://b/shards/ilsvrc \\
        --background_shards s3://b/shards/background --tracking.tracking_uri http://mlflow:5000 \\
        --search.num_samples 32 --cluster.num_workers 4 --cluster.use_gpu --cluster.storage_path s3://b/runs
"""

from __future__ import annotations

import sys

from bgwsol.errors import run_entry_point
from bgwsol.flow import parse_job, run_job
from bgwsol.workflows.tune_job import TuneJob, run_tune, tune_problems

DEFAULTS = TuneJob()


def main(argv: list[str] | None = None) -> int:
    job, _ = parse_job(TuneJob, DEFAULTS, __doc__, argv)
    return run_job(job, tune_problems(job), run_tune, log_dir=None, name="tune")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "tune_ilsvrc"))
