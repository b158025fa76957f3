"""Reader of a background-image folder: every image file below it, label -1."""

from __future__ import annotations

import os
from pathlib import Path

from bgwsol.data.records import BACKGROUND_LABEL, DatasetFormatError, Sample

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_background_folder(root: str | Path) -> list[Sample]:
    """Background samples under ``root`` (recursive), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: background folder not found")
    samples = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith(SUFFIXES):
                path = Path(dirpath) / name
                samples.append(Sample(str(path.relative_to(root)), path, BACKGROUND_LABEL, source="background"))
    if not samples:
        raise DatasetFormatError(f"{root}: no images ({', '.join(SUFFIXES)}) in the background folder")
    return sorted(samples, key=lambda s: s.image_id)
