"""CUB-200-2011 (or the embedded synthetic CUB) -> shards -> Ray Train + Ray Tune -> MLflow -> test table.

The same pipeline as ``flows/train_ilsvrc.py`` on CUB's layout (``images.txt``,
``bounding_boxes.txt``, ``train_test_split.txt``; ``segmentations/`` masks give PxAP when
present): shards with Ray Data into ``--shards_dir``/cub, trains the CAM baseline, searches
bgwsol's loss weights with Ray Tune (each trial a Ray Train run), registers the best
checkpoint as ``bgwsol-cub`` (alias ``champion`` on improvement), reads the test split once
and prints the table and where to look.

    python flows/train_cub.py                                       # the embedded synthetic CUB
    ray job submit --working-dir . -- python flows/train_cub.py --source /data/CUB_200_2011 \\
        --background /data/background --shards_dir s3://b/shards --cluster.storage_path s3://b/runs \\
        --cluster.num_workers 4 --cluster.use_gpu --run.model.backbone resnet50 --run.data.input_size 224 \\
        --run.train.epochs 50 --tracking.tracking_uri http://mlflow:5000 --search.num_samples 16
"""

from __future__ import annotations

import sys

from bgwsol.errors import run_entry_point
from bgwsol.config import replace
from bgwsol.workflows.main_job import PipelineConfig, flow_main

# sized for the embedded synthetic CUB (8 classes x 20 train images); not applied with --source
DEMO = {"run.train.epochs": 10, "run.eval.cam_curve_interval": 0.01, "search.num_samples": 2,
        "search.grace_period": 4, "etl.samples_per_shard": 64}
DEFAULTS = replace(PipelineConfig(), **{"dataset": "cub", "output_dir": "outputs/train_cub"})


def main(argv: list[str] | None = None) -> int:
    return flow_main(DEFAULTS, __doc__, argv, demo=DEMO)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "train_cub"))
