"""Shard your own photos into WebDataset tars + manifest.json with Ray Data (train / val / test).

``--source`` holds one folder per class (torchvision's ``ImageFolder`` layout). Boxes for some
of the images come from an annotation tool: Pascal VOC XML beside each image or in a parallel
``annotations/`` tree (LabelImg, CVAT, Label Studio, Roboflow), or one ``annotations.json`` in
COCO form. The images with a box of their class are split by image id into validation
(``--etl.val_fraction`` of them) and test; every other image trains without boxes. In a class
whose photos are mostly boxed (a full annotation export), ``--etl.boxed_train_share`` of the
boxed ones train too (boxes unused), keeping ``--etl.eval_min_per_class`` per class for
validation and for test. A test set
labelled apart goes in ``--eval_source`` (the same layout): its boxed images are then the test
split, and the boxed images under ``--source`` validation. Boxes of
other classes are ignored and counted in the manifest (``reader``); the conventions each
format follows are in ``bgwsol/data/sources/folder.py``.

    python flows/shard_folder.py --source /data/fruit --output s3://my-bucket/shards/fruit
    ray job submit --working-dir . -- python flows/shard_folder.py --source s3://my-bucket/raw/fruit \\
        --output s3://my-bucket/shards/fruit
    python flows/shard_folder.py --source /data/fruit --eval_source /data/fruit_test --output data/shards/fruit
"""

from __future__ import annotations

import sys

from bgwsol.config import replace
from bgwsol.errors import run_entry_point
from bgwsol.data.shards.jobs import DatasetShardJob, flow_main, run_dataset_job

DEFAULTS = replace(DatasetShardJob(dataset="folder", output="data/shards/folder"), **{"etl.val_fraction": 0.5})


def main(argv: list[str] | None = None) -> int:
    return flow_main(DatasetShardJob, DEFAULTS, __doc__, run_dataset_job, argv, "shard_folder")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "shard_folder"))
