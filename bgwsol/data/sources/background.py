"""Reader of a background-image folder (local or an ``s3://`` prefix): every image file below it, label -1."""

from __future__ import annotations

from pathlib import Path

from bgwsol.data.sources.records import BACKGROUND_LABEL, DatasetFormatError, Sample
from bgwsol.data.sources.source_tree import SourceTree

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_background_folder(root: str | Path | SourceTree) -> list[Sample]:
    """Background samples under ``root`` (recursive, one listing), sorted by relative path."""
    tree = SourceTree(root)
    if not tree.exists():
        raise DatasetFormatError(f"{tree.url}: background folder not found")
    samples = [Sample(rel, tree.path(rel), BACKGROUND_LABEL, source="background")
               for rel in tree.files("") if rel.lower().endswith(SUFFIXES)]
    if not samples:
        raise DatasetFormatError(f"{tree.url}: no images ({', '.join(SUFFIXES)}) in the background folder")
    return samples


def read_exclude_list(path: str | Path) -> set[str]:
    """The photos an exclusion file names: one path or image id a line (``#`` starts a comment),
    or a CSV with an ``image_id`` or ``path`` column (``bgwsol check-background`` writes one)."""
    import csv

    text = Path(path).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return set()
    header = [h.strip() for h in lines[0].split(",")]
    if "image_id" in header or "path" in header:
        names = set()
        for row in csv.DictReader(lines):
            names.update(v.strip() for k, v in row.items() if k in ("image_id", "path") and v and v.strip())
        return names
    return set(lines)


def exclude_photos(samples: list[Sample], names: set[str]) -> tuple[list[Sample], list[Sample], set[str]]:
    """``(kept, left out, names that match no photo)``: a photo is left out when ``names`` holds
    its image id (path relative to the folder) or its full path or URL."""
    kept, dropped, seen = [], [], set()
    for sample in samples:
        hit = {sample.image_id, str(sample.path)} & names
        if hit:
            dropped.append(sample)
            seen |= hit
        else:
            kept.append(sample)
    return kept, dropped, names - seen
