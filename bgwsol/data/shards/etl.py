"""Ray Data ETL: reader samples -> decoded, validated, shrunk JPEGs -> WebDataset shards + manifest.

Pipeline per split (one Ray task per shard)::

    listing (from the dataset's own index files, on the driver)
      -> ray.data.from_arrow(one table per shard)     # the sample-to-shard assignment is fixed here
      -> map_batches(write_shards)                    # read, decode, validate, resize, encode, and
                                                      # stream each sample into <split>-%06d.tar
      -> take_all()                                   # per-shard stats for the manifest

Commit protocol: the job takes the prefix's write lock (``_writing.json``,
:mod:`~bgwsol.data.shards.writelock`; a second job on the same prefix stops with
:class:`~bgwsol.data.shards.writelock.PrefixBusy` before touching anything), the old
``manifest.json`` is deleted, shards are written, shards not in the new set are removed,
``rejects.jsonl`` is written, ``manifest.json`` last, and the lock is removed. A run that dies
midway leaves no manifest, and readers refuse the prefix. A store that fails midway stops the
job with one :class:`~bgwsol.data.storage.StorageError` naming the object's URL.

Every shard is mixed from its first member (:func:`shard_order`): each class is spread evenly
over the whole split, so a shard of ``n`` samples holds about ``min(n, classes)`` classes in
proportion to their sizes, and its members are stored in the order of the SHA-1 of their key,
a random order that does not follow the class. (Stored in key order, which begins with the
class for ILSVRC and CUB, a reader's shuffle buffer would span ~100 consecutive ILSVRC classes
at a time.) The order depends only on the keys, and tar headers carry fixed mtimes/owners: the
same input gives byte-identical shards and the same manifest.

Memory: a task streams each sample into its tar as soon as it is encoded, so it holds the
``read_ahead`` source files in flight and one sample, whatever the shard size, and asks Ray for
:func:`task_memory` bytes (``benchmarks/bench_etl.py`` measures its peak).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import re
import tarfile
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from bgwsol.config import option
from bgwsol.data.shards.imageproc import RejectedImage, process_image
from bgwsol.data.sources.records import Sample
from bgwsol.data.sources.rejects import DEFAULT_MAX_SHARE, annotation_reject, check_share, reject
from bgwsol.data.sources.source_tree import read_source
from bgwsol.data.shards.shardset import MANIFEST_NAME, REJECTS_NAME, FORMAT, ShardSet, manifest_bytes
from bgwsol.data.shards.writelock import prefix_lock
from bgwsol.data.storage import Location, StorageError, check_access, endpoint_url, storage_errors

log = logging.getLogger(__name__)


@dataclass
class ShardConfig:
    """Knobs of the ETL (written into the manifest)."""

    max_short_side: int = option(320, "shrink images so the shorter side is at most this many pixels")
    jpeg_quality: int = option(90, "JPEG quality of the re-encoded images")
    shard_size_mb: float = option(512.0, "target shard size in MiB (0.5-1 GiB suits ILSVRC on S3)")
    samples_per_shard: int = option(0, "fixed samples per shard; 0: derive from shard_size_mb")
    val_fraction: float = option(0.15, "share of boxed train images held out as the validation split")
    boxed_train_share: float = option(0.6, "folder layout: in a class whose boxed photos outnumber its unboxed "
                                           "ones (a full annotation export), this share of them trains (boxes "
                                           "unused); 0: every boxed photo validates or tests")
    eval_min_per_class: int = option(10, "folder layout: boxed photos kept per class for validation and for test "
                                         "(each) before any boxed photo of that class trains")
    cpus_per_task: float = option(1.0, "Ray CPUs per ETL task (one task writes one shard)")
    read_ahead: int = option(16, "source files each ETL task reads ahead on threads (hides S3 / network file "
                                 "system latency; 1: one at a time)")
    max_reject_share: float = option(DEFAULT_MAX_SHARE, "stop, without a manifest, when more than this share of the "
                                                        "samples is rejected (a wrong layout, not a few bad files)")

    # settings that do not change the shards' content: a shard set made with other values is the same data
    SCHEDULING = ("cpus_per_task", "read_ahead", "max_reject_share")

    @classmethod
    def output_settings(cls, settings: "ShardConfig | dict") -> dict:
        """The settings that decide the shards' content (all but :attr:`SCHEDULING`), of a config
        or of a manifest's ``etl`` record."""
        values = asdict(settings) if isinstance(settings, ShardConfig) else settings
        return {k: v for k, v in values.items() if k not in cls.SCHEDULING}


@dataclass
class SplitListing:
    """The rows of one split, ready for the ETL (see :func:`listing_rows`)."""

    name: str
    rows: list[dict] = field(default_factory=list)
    found: dict = field(default_factory=dict)  # what the reader counted (recorded in the manifest as "reader")


# ------------------------------------------------------------------------------------ listing

_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def sample_key(image_id: str) -> str:
    """A WebDataset key from an image id: extension dropped, ``/`` -> ``--``, other odd characters -> ``_``.

    ``"train/n01440764/n01440764_10026.JPEG"`` -> ``"train--n01440764--n01440764_10026"``.
    """
    stem = image_id.rsplit(".", 1)[0] if "." in image_id.rsplit("/", 1)[-1] else image_id
    return "--".join(_KEY_BAD.sub("_", part) for part in stem.split("/"))


def listing_rows(samples: Iterable[Sample], classes: list[str]) -> list[dict]:
    """One plain dict per sample (what the Ray tasks receive); keys must be unique."""
    rows, seen = [], {}
    for s in samples:
        key = sample_key(s.image_id)
        if key in seen:
            raise ValueError(f"image ids {seen[key]!r} and {s.image_id!r} map to the same shard key {key!r}")
        seen[key] = s.image_id
        rows.append({
            "__key__": key, "image_id": s.image_id, "path": str(s.path), "label": int(s.label),
            "wnid": classes[s.label] if s.label >= 0 else "", "boxes": json.dumps(np.asarray(s.boxes).tolist()),
            "mask_path": str(s.mask_path) if s.mask_path else "", "source": s.source,
            "license": s.license, "problem": s.problem,
        })
    return rows


MEMBER_ORDER = "class-spread/sha1"  # recorded in the manifest; older sets stored members in key order


def _key_hash(row: dict) -> int:
    return int.from_bytes(hashlib.sha1(row["__key__"].encode()).digest(), "big")


def shard_order(rows: list[dict]) -> list[dict]:
    """Rows in the order they are cut into shards: every class spread evenly over the split.

    A class's ``n`` rows, in the order of the SHA-1 of their key, sit at positions
    ``(i + u) / n`` of the split (``u`` in [0, 1) from the same hash), and all rows are sorted by
    position. Any contiguous run of ``m`` rows then holds each class in proportion to its size,
    about ``min(m, classes)`` of them for balanced classes, where a plain hash order would hold
    about 63 % of the classes when ``m`` equals their number. Reruns give the same order.
    """
    by_class: dict[int, list[tuple[int, dict]]] = {}
    for row in rows:
        by_class.setdefault(int(row["label"]), []).append((_key_hash(row), row))
    placed = []
    for members in by_class.values():
        members.sort(key=lambda t: t[0])
        n = len(members)
        placed += [((i + h / 2**160) / n, h, r) for i, (h, r) in enumerate(members)]
    placed.sort(key=lambda t: t[:2])
    return [r for _, _, r in placed]


def assign_shards(ordered: list[dict], per_shard: int) -> list[list[dict]]:
    """Cut rows already in :func:`shard_order` into shards of ``per_shard`` (the last one shorter),
    each in its storage order: the SHA-1 of the key, random with respect to the class."""
    return [sorted(ordered[i:i + per_shard], key=_key_hash) for i in range(0, len(ordered), per_shard)]


def per_shard_count(ordered: list[dict], cfg: ShardConfig, probe: int = 16) -> int:
    """Samples per shard: ``cfg.samples_per_shard``, or ``shard_size_mb`` over the mean size of
    ``probe`` processed samples (the first ones of ``ordered``, rows in :func:`shard_order`, so the
    estimate is deterministic)."""
    if cfg.samples_per_shard:
        return cfg.samples_per_shard
    sizes = []
    for row in ordered[:probe]:
        try:
            sizes.append(len(process_image(read_source(row["path"]), max_short_side=cfg.max_short_side,
                                           jpeg_quality=cfg.jpeg_quality).jpeg) + 512)
        except (RejectedImage, OSError):
            continue
    mean = float(np.mean(sizes)) if sizes else 100_000.0
    return max(1, int(cfg.shard_size_mb * 2**20 / mean))


def shard_config_problems(cfg: ShardConfig, flag: str = "--etl.") -> list[str]:
    """One line per out-of-range ETL setting (shown as ``<flag><field>``), checked before any work."""
    checks = [
        (cfg.max_short_side >= 16, "max_short_side", "must be >= 16 pixels"),
        (1 <= cfg.jpeg_quality <= 100, "jpeg_quality", "must be in 1..100"),
        (cfg.shard_size_mb > 0, "shard_size_mb", "must be > 0"),
        (cfg.samples_per_shard >= 0, "samples_per_shard", "must be >= 0 (0: derive from shard_size_mb)"),
        (0 < cfg.val_fraction < 1, "val_fraction", "must be in (0, 1)"),
        (0 <= cfg.boxed_train_share < 1, "boxed_train_share", "must be in [0, 1)"),
        (cfg.eval_min_per_class >= 1, "eval_min_per_class", "must be >= 1"),
        (cfg.cpus_per_task > 0, "cpus_per_task", "must be > 0"),
        (cfg.read_ahead >= 1, "read_ahead", "must be >= 1"),
        (0 <= cfg.max_reject_share <= 1, "max_reject_share", "must be in [0, 1]"),
    ]
    return [f"{flag}{name} {getattr(cfg, name)!r}: {why}" for ok, name, why in checks if not ok]


# ------------------------------------------------------------------------------- the Ray task

def _fetch(row: dict) -> tuple[bytes, bytes | None]:
    return read_source(row["path"]), (read_source(row["mask_path"]) if row["mask_path"] else None)


def read_ahead(rows: list[dict], depth: int) -> Iterator[tuple[dict, Future]]:
    """``(row, future of (image bytes, mask bytes or None))`` in row order, with up to ``depth``
    reads in flight on threads while the caller decodes.

    One read from S3 waits tens of milliseconds for the first byte, several times what decoding
    the image costs; reading ahead keeps a task's CPU busy. A failed read surfaces as the
    future's exception (an ``OSError``), at its row.
    """
    todo = iter(rows)
    with ThreadPoolExecutor(max(1, depth), thread_name_prefix="etl-read") as pool:
        pending = deque((row, pool.submit(_fetch, row)) for row in itertools.islice(todo, max(1, depth)))
        while pending:
            row, fut = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_fetch, nxt)))
            yield row, fut


def encode_row(row: dict, fetch: Future, cfg: ShardConfig) -> tuple[dict | None, str, int]:
    """One listing row -> ``(members, reject reason, clipped boxes)``.

    ``members`` maps a tar extension (``jpg``, ``json``, ``mask.png``) to its bytes, None for a
    rejected sample, whose reason is then non-empty (the image did not decode or validate, or
    the file could not be read).
    """
    try:
        data, mask_bytes = fetch.result()
        res = process_image(data, np.asarray(json.loads(row["boxes"]), np.int64).reshape(-1, 4),
                            max_short_side=cfg.max_short_side, jpeg_quality=cfg.jpeg_quality, mask=mask_bytes)
    except RejectedImage as exc:
        reason = str(exc)
        if exc.about_mask:  # name the mask file: the image itself is fine
            reason += f" ({row['mask_path']})"
        return None, reason, 0
    except OSError as exc:
        return None, f"cannot read: {exc}", 0
    meta = json.dumps({"label": row["label"], "wnid": row["wnid"], "boxes": res.boxes.tolist(),
                       "size": list(res.size), "orig_size": list(res.orig_size), "image_id": row["image_id"],
                       "source": row["source"], "license": row["license"]}, sort_keys=True).encode()
    members = {"jpg": res.jpeg, "json": meta}
    if res.mask_png is not None:
        members["mask.png"] = res.mask_png
    return members, "", res.clipped_boxes


class _HashingWriter:
    """File-like wrapper that counts and SHA-256-hashes what passes through to ``raw``."""

    def __init__(self, raw):
        self.raw, self.sha, self.nbytes = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.nbytes += len(data)
        self.raw.write(data)
        return len(data)


class TarStream:
    """One WebDataset tar written sample by sample (a stream: nothing is held after it is written).

    Headers carry mtime 0 and fixed owner names, so equal samples in equal order give identical
    bytes. ``nbytes`` and ``sha256`` are final after :meth:`close`.
    """

    def __init__(self, fileobj):
        self._out = _HashingWriter(fileobj)
        self._tar = tarfile.open(fileobj=self._out, mode="w|", format=tarfile.USTAR_FORMAT)

    def add(self, key: str, members: dict[str, bytes | str]) -> None:
        for ext in ("jpg", "json", "mask.png"):
            value = members.get(ext)
            if value is None:
                continue
            data = value.encode() if isinstance(value, str) else value
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "bgwsol", "bgwsol"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()

    @property
    def nbytes(self) -> int:
        return self._out.nbytes

    @property
    def sha256(self) -> str:
        return self._out.sha.hexdigest()


def write_tar(rows: list[dict], fileobj) -> tuple[int, str]:
    """Write ``rows`` (``{"__key__", "jpg", "json", "mask.png"?}``, in the given order) as one
    WebDataset tar; returns ``(bytes, sha256)``."""
    tar = TarStream(fileobj)
    for row in rows:
        tar.add(row["__key__"], row)
    tar.close()
    return tar.nbytes, tar.sha256


@dataclass
class ShardTarget:
    """Where one split's shards go, as the Ray tasks receive it: ``<split>-%06d.tar`` under ``url``."""

    url: str
    path: str                 # the filesystem's path of the prefix
    filesystem: object        # a pyarrow filesystem (travels to the tasks with the driver's endpoint)
    endpoint: str | None      # the S3 endpoint that filesystem talks to, named in errors
    split: str

    @classmethod
    def of(cls, location: Location, split: str) -> "ShardTarget":
        return cls(location.url, location.fs_path, location.filesystem(),
                   endpoint_url() if location.is_s3 else None, split)


def write_shard(rows: list[dict], shard: int, cfg: ShardConfig, target: ShardTarget) -> dict:
    """Read, encode and stream the listing ``rows`` of one shard into ``<split>-<shard>.tar``.

    Returns ``{"name", "count", "classes", "masks", "bytes", "sha256", "clipped", "rejects": [{"key",
    "path", "reason"}]}`` (``masks``: samples stored with a ground-truth mask). A shard whose every
    sample is rejected writes no file (``count`` 0).
    """
    name = f"{target.split}-{shard:06d}.tar"
    url = f"{target.url}/{name}"
    entry = {"name": name, "count": 0, "classes": 0, "masks": 0, "bytes": 0, "sha256": "", "clipped": 0,
             "rejects": []}
    labels: set[int] = set()
    with contextlib.ExitStack() as opened:
        tar = None
        for row, fetch in read_ahead(rows, cfg.read_ahead):
            members, reason, clipped = encode_row(row, fetch, cfg)
            if members is None:
                entry["rejects"].append(reject(row["__key__"], row["path"], reason))
                continue
            with storage_errors(url, "write", target.endpoint):
                if tar is None:
                    stream = opened.enter_context(target.filesystem.open_output_stream(f"{target.path}/{name}"))
                    tar = TarStream(stream)
                tar.add(row["__key__"], members)
            entry["count"] += 1
            entry["masks"] += "mask.png" in members
            entry["clipped"] += clipped
            labels.add(int(row["label"]))
        if tar is not None:
            with storage_errors(url, "write", target.endpoint):
                tar.close()
                opened.close()  # the object is complete once its stream is closed
            entry["bytes"], entry["sha256"] = tar.nbytes, tar.sha256
    entry["classes"] = len(labels - {-1})
    return entry


def write_shards(batch: pa.Table, cfg: ShardConfig, target: ShardTarget) -> pa.Table:
    """Ray Data ``map_batches`` function: listing rows of whole shards (``__shard__`` column, one
    shard's rows together) -> one ``result`` row (JSON of :func:`write_shard`'s entry) per shard."""
    results = [write_shard(list(rows), shard, cfg, target)
               for shard, rows in itertools.groupby(batch.to_pylist(), key=lambda r: r["__shard__"])]
    return pa.table({"result": pa.array([json.dumps(r) for r in results], pa.string())})


# a Ray worker's own footprint (~250 MiB with pyarrow, PIL and numpy loaded) plus a task's peak,
# 115-156 MiB with read_ahead 16 whatever the shard size (benchmarks/bench_etl.py --task-memory:
# 64 MiB to 1 GiB shards; holding the shard as before took 444 MiB to 4 GiB), rounded up
TASK_MEMORY_BASE = 512 * 2**20


def task_memory(cfg: ShardConfig) -> int:
    """Bytes an ETL task asks Ray for (``memory=``): flat in ``shard_size_mb``, since samples stream
    into the tar, plus 4 MiB per source file read ahead beyond the measured 16. (A task that held
    its shard needed about 4 times the shard size; one image of ``MAX_PIXELS`` alone decodes to
    600 MB, so such a photo still needs headroom the request does not reserve.)"""
    return TASK_MEMORY_BASE + max(0, cfg.read_ahead - 16) * 4 * 2**20


def write_split(shards: list[list[dict]], location: Location, split: str, cfg: ShardConfig) -> list[dict]:
    """Run the Ray Data pipeline over one split's shard lists; returns the per-shard results."""
    import ray.data

    tables = [pa.Table.from_pylist([{**r, "__shard__": i} for r in rows]) for i, rows in enumerate(shards)]
    target = ShardTarget.of(location, split)
    with storage_errors(location.url, "create", target.endpoint):
        target.filesystem.create_dir(target.path, recursive=True)
    ds = ray.data.from_arrow(tables)
    ds = ds.map_batches(write_shards, fn_kwargs={"cfg": cfg, "target": target}, batch_size=None,
                        batch_format="pyarrow", num_cpus=cfg.cpus_per_task, memory=task_memory(cfg))
    # tasks return only small stats: Ray Data's default reservation of half the CPUs for operator
    # outputs would run them one at a time
    ds.context.op_resource_reservation_enabled = False
    # a task's StorageError (the store went away) reaches the driver as itself, not as Ray
    # Data's UserCodeException around a formatted traceback
    ds.context.raise_original_map_exception = True
    with _ray_data_errors_held() as held:
        try:
            results = [json.loads(row["result"]) for row in ds.take_all()]
        except Exception as exc:
            cause = storage_cause(exc)
            if cause is None:
                raise
            held.clear()  # the StorageError says it all; Ray Data's log file keeps the task's traceback
            raise StorageError(str(cause)) from exc
    names = [r["name"] for r in results]
    if len(names) != len(set(names)) or len(names) != len(shards):
        raise RuntimeError(f"{location.url}: split {split!r} expected {len(shards)} shards, tasks returned "
                           f"{sorted(Counter(names).items())}: a shard was split across tasks")
    return sorted(results, key=lambda r: r["name"])


def storage_cause(exc: BaseException) -> StorageError | None:
    """The :class:`StorageError` behind ``exc``, however Ray wrapped it (a task's error arrives as a
    ``RayTaskError`` with the original as ``.cause``, Ray Data may chain it further); None if none."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageError) and not hasattr(e, "cause"):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


@contextmanager
def _ray_data_errors_held() -> Iterator[list[logging.LogRecord]]:
    """Hold back the ERROR records Ray Data logs on the console during the body, and show them after
    it unless the caller cleared the list.

    Ray Data logs a failed task with its whole traceback (and a plea to report a Ray bug) before
    raising; for a store that went away the one-line :class:`StorageError` is the whole story, and
    its traceback stays in Ray Data's own log file."""
    held: list[logging.LogRecord] = []
    consoles = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if not any(r is record for r in held):  # each console handler sees the record once
            held.append(record)
        return False

    for h in consoles:
        h.addFilter(hold)
    try:
        yield held
    finally:
        for h in consoles:
            h.removeFilter(hold)
        for record in held:
            for h in consoles:
                h.handle(record)


def code_version() -> str:
    """``bgwsol <version>`` (the ETL code that made the shards)."""
    from bgwsol import __version__

    return f"bgwsol {__version__}"


def dataset_listings(dataset: str, root: str, val_fraction: float, eval_root: str = "",
                     boxed_train_share: float = 0.6, eval_min_per_class: int = 10
                     ) -> tuple[list[SplitListing], list[str], list[str]]:
    """``train`` / ``val`` / ``test`` listings of a dataset in its own layout (``ilsvrc``, ``cub``, or
    ``folder``: class folders with VOC / COCO boxes, :mod:`bgwsol.data.sources.folder`, where
    ``val_fraction`` is the validation share of the boxed images and the rest is test, or
    ``eval_root`` is a second tree whose boxed images are test; ``boxed_train_share`` and
    ``eval_min_per_class``: how much of a mostly boxed class trains), plus the classes and their names.

    Validation is carved from the labelled train images exactly as in local training
    (:func:`bgwsol.data.sources.splits.hold_out`), so a shard set and a folder give the same splits.
    """
    from bgwsol.data.sources.splits import hold_out, read_dataset

    if dataset == "folder":  # boxes only where the user drew them: those images are validation and test
        from bgwsol.data.sources.folder import read_folder

        train, val, test, classes, found = read_folder(root, val_fraction, eval_root or None, boxed_train_share,
                                                       eval_min_per_class)
        split = (f"{found.boxed_images} with a box of their class ({found.boxed_train} train, {len(val)} validate); "
                 f"{eval_root}: {found.eval_images} images, {len(test)} with a box test" if eval_root else
                 f"{found.boxed_images} with a box of their class ({found.boxed_train} train, {len(val)} validation, "
                 f"{len(test)} test)")
        log.info("%s: %d images in %d class folders; %s; %d boxes in all, %d boxes of other classes ignored", root,
                 found.images, len(classes), split, found.boxes, found.other_class_boxes)
        if found.eval_unboxed or found.eval_also_in_train:
            log.warning("%s: %d images without a box of their class are not used; %d have an id the training tree "
                        "has too", eval_root, found.eval_unboxed, found.eval_also_in_train)
        return ([SplitListing("train", listing_rows(train, classes), found.to_json()),
                 SplitListing("val", listing_rows(val, classes)), SplitListing("test", listing_rows(test, classes))],
                classes, list(classes))
    if eval_root:
        raise ValueError(f"eval_root is for the folder layout, not {dataset!r}")
    train, test, classes, names = read_dataset(dataset, root)
    train, val = hold_out(train, val_fraction)
    return ([SplitListing("train", listing_rows(train, classes)), SplitListing("val", listing_rows(val, classes)),
             SplitListing("test", listing_rows(test, classes))], classes, names)


def write_shard_set(splits: list[SplitListing], url: str, *, dataset: str, classes: list[str],
                    class_names: list[str] | None = None, cfg: ShardConfig | None = None, source: str = "") -> ShardSet:
    """Shard every split of ``splits`` into ``url`` and commit the manifest; returns the opened set.

    Rejected samples (a problem the reader found, unreadable, undecodable, an invalid box) are
    skipped, counted per reason in the manifest and listed in ``rejects.jsonl``; boxes that reach
    past the image edge are clipped and counted (``clipped_boxes``). When more than
    ``cfg.max_reject_share`` of the samples is rejected the run stops with
    :class:`~bgwsol.data.sources.rejects.TooManyRejects` and commits no manifest: before any work for
    what the readers found, after the shards for what only decoding shows. ``source`` (where
    the data came from) is recorded in the manifest.

    Another job writing ``url`` stops this one with :class:`~bgwsol.data.shards.writelock.PrefixBusy`
    before anything there changes; a store that fails midway raises
    :class:`~bgwsol.data.storage.StorageError` naming the object's URL (the prefix is left without a
    manifest, and a rerun completes it).
    """
    cfg = cfg or ShardConfig()
    problems = shard_config_problems(cfg, "")
    if problems:
        raise ValueError("; ".join(problems))
    total = sum(len(x.rows) for x in splits)
    rejects: list[dict] = [annotation_reject(r["__key__"], r["path"], r["problem"], x.name)
                           for x in splits for r in x.rows if r.get("problem")]
    check_share(rejects, total, cfg.max_reject_share, source or url)
    loc = check_access(url, writable=True)
    with prefix_lock(loc):
        clipped, reasons = _write_and_commit(splits, loc, dataset=dataset, classes=classes, class_names=class_names,
                                             cfg=cfg, source=source, url=url, rejects=rejects, total=total)
    if clipped:
        log.info("%d boxes reached past the image edge and were clipped to it", clipped)
    if reasons:
        log.warning("%d samples rejected (%s); details in %s", sum(reasons.values()),
                    ", ".join(f"{k}: {v}" for k, v in reasons.items()), loc.join(REJECTS_NAME).url)
    return ShardSet.open(loc.url)


def _write_and_commit(splits: list[SplitListing], loc: Location, *, dataset: str, classes: list[str],
                      class_names: list[str] | None, cfg: ShardConfig, source: str, url: str, rejects: list[dict],
                      total: int) -> tuple[int, Counter]:
    """The commit protocol under the write lock (module docstring); returns (clipped boxes, rejects by reason)."""
    loc.join(MANIFEST_NAME).delete()  # from now on the prefix is uncommitted
    manifest: dict = {"format": FORMAT, "dataset": dataset, "classes": classes,
                      "class_names": class_names or classes, "splits": {}, "etl": asdict(cfg),
                      "code_version": code_version(), "source": source, "member_order": MEMBER_ORDER}
    clipped = 0
    found = {x.name: x.found for x in splits if x.found}
    if found:
        manifest["reader"] = found
    for listing in splits:
        rows = [r for r in listing.rows if not r.get("problem")]
        if not rows:
            continue
        ordered = shard_order(rows)
        per_shard = per_shard_count(ordered, cfg)
        shards = assign_shards(ordered, per_shard)
        log.info("%s: %d samples -> %d shards of <= %d", listing.name, len(rows), len(shards), per_shard)
        results = write_split(shards, loc, listing.name, cfg)
        for r in results:
            rejects += [{"split": listing.name, **x} for x in r["rejects"]]
            clipped += r["clipped"]
        kept = [{k: r[k] for k in ("name", "count", "classes", "bytes", "sha256")} for r in results if r["count"]]
        split = {"count": sum(r["count"] for r in kept), "shards": kept}
        masks = sum(r["masks"] for r in results)
        if masks:  # PxAP needs a mask for every image of the split: say when some are missing
            split["masks"] = masks
            if masks < split["count"]:
                log.warning("%s: %d of %d samples have a ground-truth mask; PxAP needs one for every image and is "
                            "not computed on this split", listing.name, masks, split["count"])
        manifest["splits"][listing.name] = split
    wanted = {s["name"] for sp in manifest["splits"].values() for s in sp["shards"]}
    for name in loc.list_names():
        if name.endswith(".tar") and name not in wanted:
            loc.join(name).delete()  # leftovers of an earlier run with other settings
    rejects.sort(key=lambda r: (r["split"], r["key"]))
    loc.join(REJECTS_NAME).write_bytes("".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    check_share(rejects, total, cfg.max_reject_share, f"{source or url} (report: {loc.join(REJECTS_NAME).url})")
    reasons = Counter(r["reason"].split(":")[0] for r in rejects)
    manifest["rejects"] = {"count": len(rejects), "by_reason": dict(sorted(reasons.items())), "report": REJECTS_NAME}
    manifest["clipped_boxes"] = clipped
    loc.join(MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
    return clipped, reasons
