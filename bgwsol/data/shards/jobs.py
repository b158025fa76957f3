"""The shard jobs behind ``flows/shard_*.py``: configs, Ray start-up, and a printed summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bgwsol.config import option
from bgwsol.ray_init import RayConfig, init_ray
from bgwsol.data.sources.crawl import CrawlConfig
from bgwsol.data.shards.etl import ShardConfig, SplitListing, dataset_listings, listing_rows, write_shard_set
from bgwsol.data.shards.shardset import ShardSet
from bgwsol.data.storage import Location

log = logging.getLogger(__name__)


@dataclass
class DatasetShardJob:
    """Shard ILSVRC or CUB (train, validation held out from train, test) into ``output``."""

    dataset: Literal["ilsvrc", "cub"] = option("ilsvrc", "dataset layout under source")
    source: str = option("", "dataset root, a folder or s3://bucket/prefix (ILSVRC: the folder with LOC_*.csv "
                             "and Data/; CUB: CUB_200_2011/); "
                             "empty: generate the synthetic dataset under data/synthetic")
    output: str = option("data/shards/ilsvrc", "s3://bucket/prefix or a local folder for shards + manifest.json")
    etl: ShardConfig = field(default_factory=ShardConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class BackgroundShardJob:
    """Shard a background set (a folder, or a URL list to crawl first) into ``output``."""

    source: str = option("", "folder (or s3:// prefix) of background images, or a .txt/.csv URL list to crawl; "
                             "empty: the synthetic background set under data/synthetic")
    output: str = option("data/shards/background", "s3://bucket/prefix or a local folder")
    cache_dir: str = option("data/crawl_cache", "where crawled images and the crawl index are kept")
    etl: ShardConfig = field(default_factory=ShardConfig)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def _synthetic():
    from bgwsol.data.sources.synthetic import SyntheticConfig, generate

    return generate(Path("data/synthetic"), SyntheticConfig())


def run_dataset_job(job: DatasetShardJob) -> ShardSet:
    source = job.source or str(getattr(_synthetic(), job.dataset))
    listings, classes, names = dataset_listings(job.dataset, source, job.etl.val_fraction)
    init_ray(job.ray)
    return write_shard_set(listings, job.output, dataset=job.dataset, classes=classes, class_names=names, cfg=job.etl,
                           source=Location.parse(source).url)


def run_background_job(job: BackgroundShardJob, show_progress: bool = True) -> ShardSet:
    from bgwsol.data.sources.background import read_background_folder
    from bgwsol.data.sources.crawl import crawl, read_url_list
    from bgwsol.data.sources.source_tree import SourceTree

    source = job.source or str(_synthetic().background)
    if SourceTree(source).exists():
        samples = read_background_folder(source)
    else:
        report = crawl(read_url_list(source), job.cache_dir, job.crawl, show_progress=show_progress)
        if report.rejects:
            log.warning("%d URLs rejected, e.g. %s", len(report.rejects),
                        "; ".join(f"{r['url']}: {r['reason']}" for r in report.rejects[:3]))
        samples = report.samples
        if not samples:
            raise RuntimeError(f"{source}: no URL gave a usable image ({len(report.rejects)} rejected)")
    init_ray(job.ray)
    listing = SplitListing("background", listing_rows(samples, classes=[]))
    return write_shard_set([listing], job.output, dataset="background", classes=[], cfg=job.etl,
                           source=Location.parse(source).url)


def summary(shards: ShardSet) -> str:
    """Human-readable lines: counts per split, shard count, rejects, and where the manifest is."""
    m = shards.manifest
    lines = [f"shard set {shards.location.url} ({m['dataset']}, {len(shards.classes)} classes, "
             f"manifest sha256 {shards.digest[:12]})"]
    for split in shards.splits:
        sh = shards.shards(split)
        lines.append(f"  {split:<10} {shards.count(split):>9} samples in {len(sh):>5} shards "
                     f"({sum(s['bytes'] for s in sh) / 2**20:.1f} MiB)")
    rej = m["rejects"]
    lines.append(f"  rejected   {rej['count']:>9}" + (f"  ({', '.join(f'{k}: {v}' for k, v in rej['by_reason'].items())}; "
                                                      f"see {shards.location.join(rej['report']).url})" if rej["count"] else ""))
    if m.get("clipped_boxes"):
        lines.append(f"  clipped    {m['clipped_boxes']:>9} boxes that reached past the image edge")
    return "\n".join(lines)


def flow_main(job_cls: type, defaults, description: str, run, argv: list[str] | None = None) -> int:
    """Body of the ``flows/shard_*.py`` entry points: parse flags into ``job_cls``, run, print the summary."""
    import argparse

    from bgwsol.config import add_config_args, config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, job_cls, defaults)
    job = config_from_args(job_cls, parser.parse_args(argv), defaults)
    print(summary(run(job)))
    return 0
