"""Main job: ILSVRC (or the embedded synthetic ILSVRC) -> shards -> Ray Train + Ray Tune -> MLflow -> test table.

With no ``--source`` it generates the synthetic ILSVRC and background set, shards them with
Ray Data into ``--shards_dir``, starts a local MLflow tracking server (unless
``--tracking.tracking_uri`` or MLFLOW_TRACKING_URI names one), trains the CAM baseline as a
2-worker Ray Train run, searches bgwsol's loss weights with Ray Tune (Optuna + ASHA, each
trial a 2-worker Ray Train run), registers the best checkpoint as ``--model_name`` (alias
``champion`` on improvement), reads the test split once and prints the table and the
command that opens the MLflow UI.

    python flows/train_ilsvrc.py                                  # the embedded default
    ray job submit --working-dir . -- python flows/train_ilsvrc.py --source /data/ILSVRC \\
        --background /data/background --shards_dir s3://b/shards --cluster.storage_path s3://b/runs \\
        --cluster.num_workers 8 --cluster.use_gpu --run.model.backbone resnet50 --run.data.input_size 224 \\
        --tracking.tracking_uri http://mlflow:5000 --search.num_samples 32
"""

from __future__ import annotations

import sys

from bgwsol.errors import run_entry_point
from bgwsol.workflows.main_job import PipelineConfig, flow_main

# sized for the embedded synthetic ILSVRC on 2 CPU cores (under 15 minutes); not applied with --source
DEMO = {"run.train.epochs": 5, "run.eval.cam_curve_interval": 0.01, "search.num_samples": 2,
        "search.grace_period": 2, "etl.samples_per_shard": 128}
DEFAULTS = PipelineConfig()


def main(argv: list[str] | None = None) -> int:
    return flow_main(DEFAULTS, __doc__, argv, demo=DEMO)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "train_ilsvrc"))
