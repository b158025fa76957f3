"""Reader of the ILSVRC CLS-LOC layout (``LOC_synset_mapping.txt``, ``LOC_*_solution.csv``,
``Data/CLS-LOC/``, ``Annotations/CLS-LOC/``).

Splits: ``train`` lists ``Data/CLS-LOC/train/<wnid>/*.JPEG`` (boxes where
``LOC_train_solution.csv`` has them); ``test`` is ILSVRC's own validation set
(``LOC_val_solution.csv``), as in wsolevaluation. Our held-out validation split is carved
from the boxed train images by :func:`bgwsol.data.sources.splits.hold_out`.

The root is a local folder or an ``s3://`` prefix (:class:`~bgwsol.data.sources.source_tree.SourceTree`).
Malformed input raises :class:`DatasetFormatError` naming the file and line; labelled data
is never skipped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bgwsol.data.sources.records import DatasetFormatError, Sample
from bgwsol.data.sources.source_tree import SourceTree

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def read_synset_mapping(root: str | Path | SourceTree) -> list[tuple[str, str]]:
    """``[(wnid, description), ...]`` in file order; the index is the class label."""
    tree = SourceTree(root)
    name = "LOC_synset_mapping.txt"
    where = tree.where(name)
    if not tree.is_file(name):
        raise DatasetFormatError(f"{where}: missing (is {tree.url} an ILSVRC CLS-LOC root?)")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for lineno, line in enumerate(tree.read_text(name).splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, desc = line.strip().partition(" ")
        if not wnid.startswith("n") or not wnid[1:].isdigit():
            raise DatasetFormatError(f"{where}:{lineno}: {wnid!r} is not a WordNet id like n01440764")
        if wnid in seen:
            raise DatasetFormatError(f"{where}:{lineno}: duplicate wnid {wnid}")
        seen.add(wnid)
        out.append((wnid, desc))
    if not out:
        raise DatasetFormatError(f"{where}: no classes")
    return out


def parse_solution_csv(text: str, where: str,
                       wnid_to_label: dict[str, int]) -> dict[str, tuple[int, np.ndarray, int, str]]:
    """Parse ``ImageId,PredictionString`` rows into ``{image_id: (label, boxes (N, 4), lineno, problem)}``.

    The prediction string holds groups of five: ``wnid x0 y0 x1 y1``. All boxes of an image
    must name the same wnid (ILSVRC's single-label convention). ``where`` names the file in errors.
    A row whose layout is right but whose coordinates are not numbers keeps a ``problem``
    (``"<where>:<line>: ..."``) for the rejects report; a broken layout raises.
    """
    rows: dict[str, tuple[int, np.ndarray, int, str]] = {}
    lines = text.splitlines()
    if not lines or not lines[0].startswith("ImageId"):
        raise DatasetFormatError(f"{where}:1: expected the header 'ImageId,PredictionString'")
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise DatasetFormatError(f"{where}:{lineno}: empty row")
        image_id, sep, pred = line.partition(",")
        tokens = pred.split()
        if not sep or not image_id or not tokens or len(tokens) % 5:
            raise DatasetFormatError(f"{where}:{lineno}: expected 'ImageId,wnid x0 y0 x1 y1 ...', got {line!r}")
        wnids = set(tokens[0::5])
        unknown = wnids - wnid_to_label.keys()
        if unknown:
            raise DatasetFormatError(f"{where}:{lineno}: unknown wnid {sorted(unknown)[0]} (not in LOC_synset_mapping.txt)")
        if len(wnids) > 1:
            raise DatasetFormatError(f"{where}:{lineno}: boxes of one image name several classes {sorted(wnids)}")
        problem = ""
        try:
            coords = np.array([[float(v) for v in tokens[i + 1:i + 5]] for i in range(0, len(tokens), 5)])
        except ValueError:
            coords, problem = np.zeros((len(tokens) // 5, 4)), f"{where}:{lineno}: non-numeric box coordinate in {line!r}"
        if image_id in rows:
            raise DatasetFormatError(f"{where}:{lineno}: {image_id} listed twice (first at line {rows[image_id][2]})")
        rows[image_id] = (wnid_to_label[tokens[0]], coords.astype(np.int64), lineno, problem)
    return rows


def read_ilsvrc(root: str | Path | SourceTree, split: str) -> tuple[list[Sample], list[str]]:
    """Samples of ``split`` (``"train"`` or ``"test"``) and the wnids (class index order).

    ``root`` is a local folder or an ``s3://`` prefix. ``image_id`` is the path under
    ``Data/CLS-LOC`` (``train/<wnid>/<name>.JPEG``, ``val/<name>.JPEG``). Each image folder
    and ``Masks/CLS-LOC`` is listed once (no per-image stat). Sizes are read later, for the
    splits that need them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"ILSVRC split must be 'train' or 'test', got {split!r}")
    tree = SourceTree(root)
    wnids = [w for w, _ in read_synset_mapping(tree)]
    wnid_to_label = {w: i for i, w in enumerate(wnids)}
    masks = set(tree.files("Masks/CLS-LOC"))

    def sample(rel: str, label: int, boxes: np.ndarray, problem: str = "") -> Sample:
        mask = os.path.splitext(rel)[0] + ".png"
        return Sample(rel, tree.path(f"Data/CLS-LOC/{rel}"), label, boxes,
                      mask_path=tree.path(f"Masks/CLS-LOC/{mask}") if mask in masks else None, source="ilsvrc",
                      problem=problem)

    samples: list[Sample] = []
    if split == "train":
        files = tree.files("Data/CLS-LOC/train")
        if not files:
            raise DatasetFormatError(f"{tree.where('Data/CLS-LOC/train')}: missing or empty")
        csv = "LOC_train_solution.csv"
        boxes = parse_solution_csv(tree.read_text(csv), tree.where(csv), wnid_to_label) if tree.is_file(csv) else {}
        for rel in files:
            parts = rel.split("/")
            if len(parts) != 2 or not parts[1].lower().endswith(IMAGE_SUFFIXES):
                continue
            wnid, name = parts
            if wnid not in wnid_to_label:
                raise DatasetFormatError(f"{tree.where('Data/CLS-LOC/train/' + wnid)}: class folder {wnid} is not in "
                                         "LOC_synset_mapping.txt")
            label = wnid_to_label[wnid]
            stem = os.path.splitext(name)[0]
            b, problem = np.zeros((0, 4), np.int64), ""
            if stem in boxes:
                box_label, b, lineno, problem = boxes[stem]
                if box_label != label:
                    raise DatasetFormatError(f"{tree.where(csv)}:{lineno}: {stem} boxed as {wnids[box_label]} but "
                                             f"stored under {wnid}/")
            samples.append(sample(f"train/{rel}", label, b, problem))
    else:
        csv = "LOC_val_solution.csv"
        by_stem = _images_by_stem(tree.files("Data/CLS-LOC/val"))
        for image_id, (label, b, lineno, problem) in sorted(parse_solution_csv(tree.read_text(csv), tree.where(csv),
                                                                               wnid_to_label).items()):
            name = by_stem.get(image_id)
            if name is None:
                name = f"{image_id}.JPEG"
                problem = (f"{tree.where(csv)}:{lineno}: image {image_id} not found under "
                           f"{tree.where('Data/CLS-LOC/val')}")
            samples.append(sample(f"val/{name}", label, b, problem))
    if not samples:
        raise DatasetFormatError(f"{tree.url}: no images in split {split!r}")
    return samples, wnids


def _images_by_stem(names: list[str]) -> dict[str, str]:
    """``{stem: file name}`` of the image files directly in a folder listing (``.JPEG`` first on a tie)."""
    rank = {s: i for i, s in enumerate((".JPEG", ".jpeg", ".jpg", ".JPG", ".png"))}
    out: dict[str, str] = {}
    for name in sorted((n for n in names if "/" not in n and os.path.splitext(n)[1] in rank),
                       key=lambda n: rank[os.path.splitext(n)[1]], reverse=True):
        out[os.path.splitext(name)[0]] = name
    return out
