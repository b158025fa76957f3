"""Shard the background set (images with none of the target objects) with Ray Data.

The source is a folder of images (local, or an ``s3://`` prefix) or a URL list (one URL per
line, or a CSV with ``url`` and ``license`` columns; local or on S3). A URL list is crawled first into ``--cache_dir`` (timeouts, retries
with backoff, a per-host cap, size and content-type limits, decode check, SHA-256
de-duplication; URL and license stay with each sample), then sharded like a folder into
``background-%06d.tar`` + ``manifest.json``.

    python flows/shard_background.py                                   # synthetic background set
    python flows/shard_background.py --source /data/bg_photos --output s3://my-bucket/shards/background
    python flows/shard_background.py --source urls.csv --output s3://my-bucket/shards/background
"""

from __future__ import annotations

import sys

from bgwsol.errors import run_entry_point
from bgwsol.data.shards.jobs import BackgroundShardJob, flow_main, run_background_job

DEFAULTS = BackgroundShardJob()


def main(argv: list[str] | None = None) -> int:
    return flow_main(BackgroundShardJob, DEFAULTS, __doc__, run_background_job, argv, "shard_background")


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "shard_background"))
