"""Shard CUB-200-2011 into WebDataset tars + manifest.json with Ray Data (train / val / test).

Reads the dataset in its own layout, holds out the validation split from the boxed train
images, and writes ``<split>-%06d.tar`` plus ``manifest.json`` (written last: a prefix
without it is refused by every reader) and ``rejects.jsonl`` (files skipped, with reasons).
S3 endpoint and credentials come from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY. Submitted to a cluster as
``ray job submit --working-dir . -- python flows/shard_cub.py ...``; locally it starts Ray.

    python flows/shard_cub.py                                  # the synthetic default
    python flows/shard_cub.py --dataset cub --source /data/CUB_200_2011 --output s3://my-bucket/shards/cub
"""

from __future__ import annotations

import sys

from bgwsol.errors import run_entry_point
from bgwsol.data.shards.jobs import DatasetShardJob, flow_main, run_dataset_job

DEFAULTS = DatasetShardJob(dataset="cub", output="data/shards/cub")


def main(argv: list[str] | None = None) -> int:
    return flow_main(DatasetShardJob, DEFAULTS, __doc__, run_dataset_job, argv, "shard_cub")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "shard_cub"))
