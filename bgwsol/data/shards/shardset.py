"""A committed set of WebDataset shards: ``manifest.json`` plus the ``<split>-%06d.tar`` it lists.

The manifest is written last by the ETL; a prefix without one is an unfinished or foreign
shard set and :meth:`ShardSet.open` refuses it. Manifest layout::

    {"format": "bgwsol-shards/1", "dataset": "ilsvrc", "classes": [...], "class_names": [...],
     "splits": {"train": {"count": N, "shards": [{"name", "count", "bytes", "sha256"}, ...]}, ...},
     "rejects": {"count": R, "by_reason": {...}, "report": "rejects.jsonl"},
     "etl": {...config...}, "code_version": "..."}

Members of each sample: ``<key>.jpg`` (RGB JPEG), ``<key>.json``
(``{"label", "wnid", "boxes": [[x0, y0, x1, y1], ...], "size", "orig_size", "source", "license"}``,
inclusive pixel corners in the stored image; label -1 for background), and ``<key>.mask.png``
when a ground-truth mask exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from bgwsol.data.storage import Location, StorageError

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"
LOCK_NAME = "_writing.json"  # the ETL's write lock (bgwsol.data.shards.writelock): never a shard, never listed
FORMAT = "bgwsol-shards/1"


class ShardSetError(StorageError):
    """A shard prefix that is incomplete, corrupt or not a bgwsol shard set."""


def manifest_bytes(manifest: dict) -> bytes:
    """Canonical JSON (sorted keys, fixed separators): the same content gives the same bytes."""
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the canonical manifest: what runs record as the dataset version."""
    return hashlib.sha256(manifest_bytes(manifest)).hexdigest()


@dataclass(frozen=True)
class ShardSet:
    """An opened shard set. ``location`` is its prefix; ``manifest`` the parsed manifest."""

    location: Location
    manifest: dict

    @classmethod
    def open(cls, url: str) -> "ShardSet":
        """Read ``<url>/manifest.json``; raise ShardSetError if it is missing or malformed."""
        loc = Location.parse(url)
        man_loc = loc.join(MANIFEST_NAME)
        if not man_loc.exists():
            names = loc.list_names()
            present = [n for n in names if n.endswith(".tar")]
            hint = (f"{len(present)} shard files are there but no manifest: the ETL did not finish "
                    "(killed or still running); rerun it") if present else "nothing is there: check the path"
            if LOCK_NAME in names:
                hint += f"; an ETL is writing it or died while writing it ({loc.join(LOCK_NAME).url})"
            raise ShardSetError(f"{loc.url}: no {MANIFEST_NAME}, so this is not a complete shard set ({hint})")
        try:
            manifest = json.loads(man_loc.read_bytes())
        except ValueError as exc:
            raise ShardSetError(f"{man_loc.url}: not valid JSON ({exc})") from None
        if manifest.get("format") != FORMAT or "splits" not in manifest:
            raise ShardSetError(f"{man_loc.url}: not a {FORMAT} manifest")
        return cls(loc, manifest)

    @property
    def digest(self) -> str:
        return manifest_digest(self.manifest)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes", []))

    @property
    def splits(self) -> list[str]:
        return sorted(self.manifest["splits"])

    def _split(self, split: str) -> dict:
        try:
            return self.manifest["splits"][split]
        except KeyError:
            raise ShardSetError(f"{self.location.url}: no split {split!r} (has {', '.join(self.splits)})") from None

    def count(self, split: str) -> int:
        """Number of samples in ``split``."""
        return int(self._split(split)["count"])

    def shards(self, split: str) -> list[dict]:
        """The manifest entries (``name``, ``count``, ``bytes``, ``sha256``; ``classes`` in sets made
        since samples are stored mixed) of ``split``'s shards."""
        return list(self._split(split)["shards"])

    def urls(self, split: str) -> list[str]:
        """Full URLs (``s3://...`` or local paths) of ``split``'s shards, in manifest order."""
        return [self.location.join(s["name"]).url for s in self.shards(split)]

    def damaged(self, split: str | None = None, *, checksums: bool = False) -> dict[str, str]:
        """Shards (by URL) of ``split`` (or every split) that are missing or differ from the manifest.

        Sizes come from one listing of the prefix; SHA-256 with ``checksums`` (reads every byte).
        Returns ``{url: reason}``; empty when the set is intact.
        """
        entries = [e for name in ([split] if split else self.splits) for e in self.shards(name)]
        # the sizes of all shards from one listing of the prefix (ILSVRC's ~2,500 shards: 3 LIST
        # requests, where a stat per shard was 2,500 round trips, once per fit)
        sizes = self.location.list_sizes()

        def problem(entry: dict) -> str:
            size = sizes.get(entry["name"])
            if size is None:
                return "listed in the manifest but missing"
            if size != entry["bytes"]:
                return f"{size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
            if checksums and hashlib.sha256(self.location.join(entry["name"]).read_bytes()).hexdigest() != entry["sha256"]:
                return "SHA-256 differs from the manifest"
            return ""

        problems = [problem(e) for e in entries]
        return {self.location.join(e["name"]).url: why for e, why in zip(entries, problems) if why}

    def usable(self, split: str) -> tuple[dict[str, int], dict[str, str]]:
        """``({url: samples}, damaged)`` of ``split``'s shards in manifest order, without its damaged
        shards (see :meth:`damaged`)."""
        bad = self.damaged(split)
        return {url: int(e["count"]) for url, e in zip(self.urls(split), self.shards(split)) if url not in bad}, bad

    def verify(self, *, checksums: bool = False) -> None:
        """Raise :class:`ShardSetError` naming the first shard that is missing or differs from the manifest."""
        bad = self.damaged(checksums=checksums)
        if bad:
            url, reason = next(iter(bad.items()))
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ShardSetError(f"{url}: {reason}{more}")
