"""Your own photos -> shards -> Ray Train + Ray Tune -> MLflow -> test table.

The same pipeline as ``flows/train_ilsvrc.py`` on the ``folder`` layout (see
``flows/shard_folder.py``): one folder per class under ``--source``, boxes as VOC XML or COCO
JSON for the images that validate and test (``--etl.val_fraction`` of the boxed images
validate, the rest test; or a separate tree of test images as ``--eval_source``), a folder of
background photos as ``--background``. Registers the
best checkpoint as ``--model_name`` (default ``bgwsol-folder``; name it after your data).

    python flows/train_folder.py --source /data/fruit --background /data/background --model_name bgwsol-fruit
    ray job submit --working-dir . -- python flows/train_folder.py --source s3://b/raw/fruit \\
        --background s3://b/raw/background --shards_dir s3://b/shards --cluster.storage_path s3://b/runs \\
        --cluster.num_workers 4 --cluster.use_gpu --run.model.backbone resnet50 --run.data.input_size 224 \\
        --model_name bgwsol-fruit --tracking.tracking_uri http://mlflow:5000
"""

from __future__ import annotations

import sys

from bgwsol.config import replace
from bgwsol.errors import run_entry_point
from bgwsol.workflows.main_job import PipelineConfig, flow_main

DEFAULTS = replace(PipelineConfig(), **{"dataset": "folder", "output_dir": "outputs/train_folder",
                                        "etl.val_fraction": 0.5})


def main(argv: list[str] | None = None) -> int:
    return flow_main(DEFAULTS, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "train_folder"))
