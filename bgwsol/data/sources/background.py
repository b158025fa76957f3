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
