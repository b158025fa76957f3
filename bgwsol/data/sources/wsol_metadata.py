"""wsolevaluation's metadata layout: ``image_ids.txt``, ``class_labels.txt``,
``image_sizes.txt``, ``localization.txt`` (one ``id,x0,y0,x1,y1`` row per box).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgwsol.data.sources.records import DatasetFormatError, InvalidBox, Sample, fit_boxes


@dataclass
class WSOLMetadata:
    """Image ids in order, with label, ``(width, height)`` and ``(N, 4)`` boxes per id."""

    image_ids: list[str]
    labels: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    boxes: dict[str, np.ndarray] = field(default_factory=dict)


def _rows(path: Path, ncols: int) -> list[tuple[list[str], int]]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            raise DatasetFormatError(f"{path}:{lineno}: empty row")
        parts = line.strip().split(",")
        if len(parts) != ncols:
            raise DatasetFormatError(f"{path}:{lineno}: expected {ncols} comma-separated fields, got {line!r}")
        out.append((parts, lineno))
    return out


def _ints(parts: list[str], path: Path, lineno: int) -> list[int]:
    try:
        return [int(float(p)) for p in parts]
    except ValueError:
        raise DatasetFormatError(f"{path}:{lineno}: non-numeric field in {parts}") from None


def read_wsol_metadata(folder: str | Path) -> WSOLMetadata:
    """Read and cross-check one split's metadata folder; errors name file and line."""
    folder = Path(folder)
    ids_path = folder / "image_ids.txt"
    if not ids_path.is_file():
        raise DatasetFormatError(f"{ids_path}: missing")
    image_ids = [line.strip() for line in ids_path.read_text().splitlines() if line.strip()]
    if not image_ids:
        raise DatasetFormatError(f"{ids_path}: no image ids")
    known = set(image_ids)
    meta = WSOLMetadata(image_ids)
    for (parts, lineno) in _rows(folder / "class_labels.txt", 2):
        meta.labels[parts[0]] = _ints(parts[1:], folder / "class_labels.txt", lineno)[0]
    for (parts, lineno) in _rows(folder / "image_sizes.txt", 3):
        w, h = _ints(parts[1:], folder / "image_sizes.txt", lineno)
        meta.sizes[parts[0]] = (w, h)
    boxes: dict[str, list[list[int]]] = {}
    loc = folder / "localization.txt"
    for (parts, lineno) in _rows(loc, 5):
        if parts[0] not in known:
            raise DatasetFormatError(f"{loc}:{lineno}: image id {parts[0]!r} is not in image_ids.txt")
        box = _ints(parts[1:], loc, lineno)
        if parts[0] in meta.sizes:
            # a box that reaches the edge is clipped; an invalid one stops the scoring, since
            # leaving its image out would change what the score means
            try:
                box = fit_boxes(np.array([box]), meta.sizes[parts[0]])[0][0].tolist()
            except InvalidBox as exc:
                raise DatasetFormatError(f"{loc}:{lineno}: {exc}") from None
        boxes.setdefault(parts[0], []).append(box)
    for image_id in image_ids:
        for what, table in (("image_sizes.txt", meta.sizes), ("localization.txt", boxes)):
            if image_id not in table:
                raise DatasetFormatError(f"{folder / what}: no row for image {image_id!r}")
    meta.boxes = {k: np.asarray(v, dtype=np.int64) for k, v in boxes.items()}
    return meta


def write_wsol_metadata(samples: list[Sample], folder: str | Path) -> Path:
    """Write samples (with sizes and boxes) as a wsolevaluation metadata folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image_ids.txt").write_text("".join(f"{s.image_id}\n" for s in samples))
    (folder / "class_labels.txt").write_text("".join(f"{s.image_id},{s.label}\n" for s in samples))
    (folder / "image_sizes.txt").write_text("".join(f"{s.image_id},{s.size[0]},{s.size[1]}\n" for s in samples))
    (folder / "localization.txt").write_text("".join(
        f"{s.image_id},{b[0]},{b[1]},{b[2]},{b[3]}\n" for s in samples for b in s.boxes))
    return folder
