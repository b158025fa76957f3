"""Reader of the ILSVRC CLS-LOC layout (``LOC_synset_mapping.txt``, ``LOC_*_solution.csv``,
``Data/CLS-LOC/``, ``Annotations/CLS-LOC/``).

Splits: ``train`` lists ``Data/CLS-LOC/train/<wnid>/*.JPEG`` (boxes where
``LOC_train_solution.csv`` has them); ``test`` is ILSVRC's own validation set
(``LOC_val_solution.csv``), as in wsolevaluation. Our held-out validation split is carved
from the boxed train images by :func:`bgwsol.data.splits.hold_out`.

Malformed input raises :class:`DatasetFormatError` naming the file and line; labelled data
is never skipped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bgwsol.data.records import DatasetFormatError, Sample

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def read_synset_mapping(root: Path) -> list[tuple[str, str]]:
    """``[(wnid, description), ...]`` in file order; the index is the class label."""
    path = root / "LOC_synset_mapping.txt"
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (is {root} an ILSVRC CLS-LOC root?)")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, desc = line.strip().partition(" ")
        if not wnid.startswith("n") or not wnid[1:].isdigit():
            raise DatasetFormatError(f"{path}:{lineno}: {wnid!r} is not a WordNet id like n01440764")
        if wnid in seen:
            raise DatasetFormatError(f"{path}:{lineno}: duplicate wnid {wnid}")
        seen.add(wnid)
        out.append((wnid, desc))
    if not out:
        raise DatasetFormatError(f"{path}: no classes")
    return out


def read_solution_csv(path: Path, wnid_to_label: dict[str, int]) -> dict[str, tuple[int, np.ndarray, int]]:
    """Parse ``ImageId,PredictionString`` rows into ``{image_id: (label, boxes (N, 4), lineno)}``.

    The prediction string holds groups of five: ``wnid x0 y0 x1 y1``. All boxes of an image
    must name the same wnid (ILSVRC's single-label convention).
    """
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing")
    rows: dict[str, tuple[int, np.ndarray, int]] = {}
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("ImageId"):
        raise DatasetFormatError(f"{path}:1: expected the header 'ImageId,PredictionString'")
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise DatasetFormatError(f"{path}:{lineno}: empty row")
        image_id, sep, pred = line.partition(",")
        tokens = pred.split()
        if not sep or not image_id or not tokens or len(tokens) % 5:
            raise DatasetFormatError(f"{path}:{lineno}: expected 'ImageId,wnid x0 y0 x1 y1 ...', got {line!r}")
        wnids = set(tokens[0::5])
        unknown = wnids - wnid_to_label.keys()
        if unknown:
            raise DatasetFormatError(f"{path}:{lineno}: unknown wnid {sorted(unknown)[0]} (not in LOC_synset_mapping.txt)")
        if len(wnids) > 1:
            raise DatasetFormatError(f"{path}:{lineno}: boxes of one image name several classes {sorted(wnids)}")
        try:
            coords = np.array([[float(v) for v in tokens[i + 1:i + 5]] for i in range(0, len(tokens), 5)])
        except ValueError:
            raise DatasetFormatError(f"{path}:{lineno}: non-numeric box coordinate in {line!r}") from None
        if image_id in rows:
            raise DatasetFormatError(f"{path}:{lineno}: {image_id} listed twice (first at line {rows[image_id][2]})")
        rows[image_id] = (wnid_to_label[tokens[0]], coords.astype(np.int64), lineno)
    return rows


def _mask_for(root: Path, rel: str) -> Path | None:
    mask = root / "Masks" / "CLS-LOC" / (os.path.splitext(rel)[0] + ".png")
    return mask if mask.is_file() else None


def read_ilsvrc(root: str | Path, split: str) -> tuple[list[Sample], list[str]]:
    """Samples of ``split`` (``"train"`` or ``"test"``) and the wnids (class index order).

    ``image_id`` is the path under ``Data/CLS-LOC`` (``train/<wnid>/<name>.JPEG``,
    ``val/<name>.JPEG``). Sizes are read later, for the splits that need them.
    """
    root = Path(root)
    classes = read_synset_mapping(root)
    wnids = [w for w, _ in classes]
    wnid_to_label = {w: i for i, w in enumerate(wnids)}
    data = root / "Data" / "CLS-LOC"
    samples: list[Sample] = []
    if split == "train":
        train_dir = data / "train"
        if not train_dir.is_dir():
            raise DatasetFormatError(f"{train_dir}: missing")
        boxes = read_solution_csv(root / "LOC_train_solution.csv", wnid_to_label) \
            if (root / "LOC_train_solution.csv").is_file() else {}
        for entry in sorted(os.scandir(train_dir), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            if entry.name not in wnid_to_label:
                raise DatasetFormatError(f"{entry.path}: class folder {entry.name} is not in LOC_synset_mapping.txt")
            label = wnid_to_label[entry.name]
            for img in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if not img.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                stem = os.path.splitext(img.name)[0]
                rel = f"train/{entry.name}/{img.name}"
                b = np.zeros((0, 4), np.int64)
                if stem in boxes:
                    box_label, b, lineno = boxes[stem]
                    if box_label != label:
                        raise DatasetFormatError(
                            f"{root / 'LOC_train_solution.csv'}:{lineno}: {stem} boxed as {wnids[box_label]} "
                            f"but stored under {entry.name}/")
                samples.append(Sample(rel, Path(img.path), label, b, mask_path=_mask_for(root, rel), source="ilsvrc"))
    elif split == "test":
        csv = root / "LOC_val_solution.csv"
        for image_id, (label, b, lineno) in sorted(read_solution_csv(csv, wnid_to_label).items()):
            path = _find_image(data / "val", image_id)
            if path is None:
                raise DatasetFormatError(f"{csv}:{lineno}: image {image_id} not found under {data / 'val'}")
            rel = f"val/{path.name}"
            samples.append(Sample(rel, path, label, b, mask_path=_mask_for(root, rel), source="ilsvrc"))
    else:
        raise ValueError(f"ILSVRC split must be 'train' or 'test', got {split!r}")
    if not samples:
        raise DatasetFormatError(f"{root}: no images in split {split!r}")
    return samples, wnids


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in (".JPEG", ".jpeg", ".jpg", ".JPG", ".png"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None
