"""The shard jobs behind ``flows/shard_*.py``: configs, Ray start-up, and a printed summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bgwsol.config import option
from bgwsol.errors import UserError, path_problem
from bgwsol.ray_init import RayConfig, init_ray
from bgwsol.data.sources.crawl import CrawlConfig
from bgwsol.data.shards.etl import MEMBER_ORDER, ShardConfig, SplitListing, dataset_listings, listing_rows, write_shard_set
from bgwsol.data.shards.shardset import ShardSet
from bgwsol.data.storage import Location

log = logging.getLogger(__name__)


EVAL_SOURCE_HELP = ("folder layout only: a second class-folder tree whose boxed images are the test split (the "
                    "boxed images under --source are then validation); empty: both from --source by "
                    "--etl.val_fraction")

BACKGROUND_EXCLUDE_HELP = ("a file naming background photos to leave out: one path or image id a line, or the CSV "
                            "`bgwsol check-background` writes (review it first: every photo it lists is left out); "
                            "empty: none")


def dataset_source_problems(dataset: str, source: str, eval_source: str = "") -> list[str]:
    """A local ``--source`` / ``--eval_source`` that does not exist; the folder layout has no embedded
    synthetic default (it needs ``--source``) and is the only one with an evaluation tree."""
    out = [p for p in (path_problem("--source", source), path_problem("--eval_source", eval_source)) if p]
    if dataset == "folder" and not source:
        out.append("--source: the folder layout has no embedded default; give the folder that holds one folder per "
                   "class")
    if eval_source and dataset != "folder":
        out.append(f"--eval_source: only the folder layout takes a separate evaluation tree (--dataset is {dataset}; "
                   "its layout has its own test split)")
    return out


def source_label(source: str, eval_source: str = "") -> str:
    """What a manifest records as its ``source`` (and a rerun compares): the URL, and the evaluation tree's."""
    url = Location.parse(source).url
    return f"{url} (test: {Location.parse(eval_source).url})" if eval_source else url


@dataclass
class DataSources:
    """Where a training job's images come from and where their shards go (the main job's and the
    comparison's first flags; :func:`shard_sources` turns them into two shard sets)."""

    dataset: Literal["ilsvrc", "cub", "folder"] = option(
        "ilsvrc", "dataset layout of --source: ilsvrc | cub | folder (one folder per class, boxes as VOC XML "
                  "or COCO JSON for the validation and test images)")
    source: str = option("", "dataset root in its own layout, a folder or s3://bucket/prefix; empty: the embedded "
                             "synthetic dataset of that layout")
    eval_source: str = option("", EVAL_SOURCE_HELP)
    background: str = option("", "background image folder (local or s3://bucket/prefix); empty: the synthetic "
                                 "background set")
    background_exclude: str = option("", BACKGROUND_EXCLUDE_HELP)
    shards_dir: str = option("data/shards", "where shards go (local folder or s3://bucket/prefix): <dataset>/ and "
                                            "background/ below it, reused when committed there with the same settings")


@dataclass
class DatasetShardJob:
    """Shard ILSVRC or CUB (train, validation held out from train, test) into ``output``."""

    dataset: Literal["ilsvrc", "cub", "folder"] = option(
        "ilsvrc", "dataset layout under source: ilsvrc | cub | folder (one folder per class; VOC XML beside the "
                  "images or under annotations/, or annotations.json in COCO form, for the boxed images)")
    source: str = option("", "dataset root, a folder or s3://bucket/prefix (ILSVRC: the folder with LOC_*.csv "
                             "and Data/; CUB: CUB_200_2011/); "
                             "empty: generate the synthetic dataset under data/synthetic")
    eval_source: str = option("", EVAL_SOURCE_HELP)
    output: str = option("data/shards/ilsvrc", "s3://bucket/prefix or a local folder for shards + manifest.json")
    log_dir: str = option("logs", "local folder for this job's log file (Ray Data's own output goes there)")
    verbose: bool = option(False, "show Ray Data's own output on the console too")
    etl: ShardConfig = field(default_factory=ShardConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class BackgroundShardJob:
    """Shard a background set (a folder, or a URL list to crawl first) into ``output``."""

    source: str = option("", "folder (or s3:// prefix) of background images, or a .txt/.csv URL list to crawl; "
                             "empty: the synthetic background set under data/synthetic")
    output: str = option("data/shards/background", "s3://bucket/prefix or a local folder")
    log_dir: str = option("logs", "local folder for this job's log file (Ray Data's and the crawler's own output "
                                  "goes there)")
    verbose: bool = option(False, "show Ray Data's own output on the console too")
    cache_dir: str = option("data/crawl_cache", "where crawled images and the crawl index are kept")
    exclude: str = option("", BACKGROUND_EXCLUDE_HELP)
    etl: ShardConfig = field(default_factory=ShardConfig)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def shard_or_reuse(make_listings, url: str, dataset: str, etl: ShardConfig, source: str) -> ShardSet:
    """The committed shard set at ``url`` if it was made from ``source`` with the same output
    settings; else shard again. ``make_listings() -> (listings, classes, class_names)`` runs only
    then, so a rerun does not list the source (ILSVRC in a bucket: ~1,300 LIST requests)."""
    from bgwsol.data.shards.shardset import ShardSetError

    try:
        existing = ShardSet.open(url)
        made_with = ShardConfig.output_settings(existing.manifest["etl"])
        if existing.manifest.get("source") == source and made_with == ShardConfig.output_settings(etl):
            if existing.manifest.get("member_order") == MEMBER_ORDER:
                log.info("reusing the committed shard set %s", url)
                return existing
            log.info("sharding %s again: its shards store their samples in class order (made before %s)",
                     url, MEMBER_ORDER)
    except ShardSetError:
        pass
    listings, classes, names = make_listings()
    return write_shard_set(listings, url, dataset=dataset, classes=classes, class_names=names, cfg=etl, source=source)


def shard_sources(sources: DataSources, etl: ShardConfig) -> tuple[str, str]:
    """Shard a dataset and a background folder under ``sources.shards_dir`` (``<dataset>/`` and
    ``background/``), or reuse what is committed there; returns the two shard-set URLs. An
    empty ``source`` is the embedded synthetic dataset of that layout (and its background set
    when ``background`` is empty too). Needs Ray (the ETL is Ray Data)."""
    from bgwsol.data.sources.background import read_background_folder

    dataset, source, background = sources.dataset, sources.source, sources.background
    if not source:
        paths = _synthetic()
        source = str(paths.cub if dataset == "cub" else paths.ilsvrc)
        background = background or str(paths.background)
    root = Location.parse(sources.shards_dir)
    data = shard_or_reuse(lambda: dataset_listings(dataset, source, etl.val_fraction, sources.eval_source,
                                                   etl.boxed_train_share, etl.eval_min_per_class),
                          root.join(dataset).url, dataset, etl, source_label(source, sources.eval_source))
    bg = shard_or_reuse(
        lambda: ([SplitListing("background", listing_rows(without_excluded(read_background_folder(background),
                                                                         sources.background_exclude), []))], [], None),
        root.join("background").url, "background", etl, background_label(background, sources.background_exclude))
    return data.location.url, bg.location.url


def _synthetic():
    from bgwsol.data.sources.synthetic import SyntheticConfig, generate

    return generate(Path("data/synthetic"), SyntheticConfig())


def run_dataset_job(job: DatasetShardJob) -> ShardSet:
    source = job.source or str(getattr(_synthetic(), job.dataset))
    listings, classes, names = dataset_listings(job.dataset, source, job.etl.val_fraction, job.eval_source,
                                                job.etl.boxed_train_share, job.etl.eval_min_per_class)
    init_ray(job.ray)
    return write_shard_set(listings, job.output, dataset=job.dataset, classes=classes, class_names=names, cfg=job.etl,
                           source=source_label(source, job.eval_source))


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
    samples = without_excluded(samples, job.exclude)
    init_ray(job.ray)
    listing = SplitListing("background", listing_rows(samples, classes=[]))
    return write_shard_set([listing], job.output, dataset="background", classes=[], cfg=job.etl,
                           source=background_label(source, job.exclude))


def without_excluded(samples: list, exclude_file: str) -> list:
    """``samples`` less the photos ``exclude_file`` names (none without one); says how many were
    left out, and how many names matched no photo (a list made for another folder)."""
    if not exclude_file:
        return samples
    from bgwsol.data.sources.background import exclude_photos, read_exclude_list

    kept, dropped, unmatched = exclude_photos(samples, read_exclude_list(exclude_file))
    log.info("%s: %d of %d background photos left out", exclude_file, len(dropped), len(samples))
    if unmatched:
        log.warning("%s: %d names match no background photo (e.g. %s): a list made for another folder?",
                    exclude_file, len(unmatched), sorted(unmatched)[0])
    if not kept:
        raise UserError(f"{exclude_file}: leaves out every background photo")
    return kept


def background_label(source: str, exclude_file: str) -> str:
    """The background shard set's ``source``: the folder's URL, and the exclusion file's SHA-256
    where one is given, so that another list shards the set again instead of reusing it."""
    url = Location.parse(source).url
    if not exclude_file:
        return url
    import hashlib

    return f"{url} less {Path(exclude_file).name} (sha256 {hashlib.sha256(Path(exclude_file).read_bytes()).hexdigest()[:12]})"


def summary(shards: ShardSet) -> str:
    """Human-readable lines: counts per split, shard count, rejects, and where the manifest is."""
    m = shards.manifest
    lines = [f"shard set {shards.location.url} ({m['dataset']}, {len(shards.classes)} classes, "
             f"manifest sha256 {shards.digest[:12]})"]
    for split in shards.splits:
        sh = shards.shards(split)
        lines.append(f"  {split:<10} {shards.count(split):>9} samples in {len(sh):>5} shards "
                     f"({sum(s['bytes'] for s in sh) / 2**20:.1f} MiB"
                     + (f"; {m['splits'][split]['masks']} with masks" if m["splits"][split].get("masks") else "")
                     + ")")
    rej = m["rejects"]
    lines.append(f"  rejected   {rej['count']:>9}" + (f"  ({', '.join(f'{k}: {v}' for k, v in rej['by_reason'].items())}; "
                                                      f"see {shards.location.join(rej['report']).url})" if rej["count"] else ""))
    if m.get("clipped_boxes"):
        lines.append(f"  clipped    {m['clipped_boxes']:>9} boxes that reached past the image edge")
    return "\n".join(lines)


def flow_main(job_cls: type, defaults, description: str, run, argv: list[str] | None = None,
              job_name: str = "shard") -> int:
    """Body of the ``flows/shard_*.py`` entry points (:mod:`bgwsol.flow`): parse flags into
    ``job_cls``, check, run, print the summary; the libraries' output goes to
    ``<log_dir>/<job_name>-<time>.log``."""
    from bgwsol.flow import parse_job, run_job

    job, _ = parse_job(job_cls, defaults, description, argv)
    return run_job(job, shard_job_problems(job), lambda j: summary(run(j)), log_dir=job.log_dir, name=job_name,
                   verbose=job.verbose)


def shard_job_problems(job: DatasetShardJob | BackgroundShardJob) -> list[str]:
    """What a shard job can check before it lists, crawls or starts Ray: the ETL's ranges and a
    local ``--source`` that must exist (a URL list to crawl is a file; ``s3://`` is checked when read)."""
    from bgwsol.data.shards.etl import shard_config_problems

    problems = dataset_source_problems(getattr(job, "dataset", ""), job.source, getattr(job, "eval_source", ""))
    problems += shard_config_problems(job.etl)
    if not job.output:
        problems.append("--output: give a folder or s3://bucket/prefix for the shards")
    excluded = path_problem("--exclude", getattr(job, "exclude", ""))
    if excluded:
        problems.append(excluded)
    crawl = getattr(job, "crawl", None)
    if crawl is not None and crawl.retries < 1:
        problems.append(f"--crawl.retries {crawl.retries}: attempts per URL, must be >= 1 (1: no retry)")
    return problems
