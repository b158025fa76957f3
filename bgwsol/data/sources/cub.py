"""Reader of CUB-200-2011 (``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
``bounding_boxes.txt`` as x, y, w, h; ``classes.txt``).

Boxes become inclusive corners ``(x, y, x + w, y + h)`` truncated to int (wsolevaluation's
CUB metadata); ``x + w`` equal to the width reaches the edge and is clipped where the image size
is known (:func:`bgwsol.data.sources.records.fit_boxes`). A row that cannot be one usable sample (a
non-numeric or empty box, an image that is not there) becomes a sample with ``problem`` set,
for the rejects report; a file that breaks the layout raises :class:`DatasetFormatError`.
Splits: ``train`` and ``test`` from ``train_test_split.txt``.

Masks (for PxAP): ``segmentations/<class>/<image>.png``, the layout CUB-200-2011's own
segmentation download unpacks to, or ``masks/`` (the same tree under another name, for sets
already made that way; ``segmentations/`` wins where both hold a file). A mask is matched to
its image by relative path with ``.png``. CUB's masks are soft (the share of annotators who
marked the pixel, 0-255); the ETL cuts them at 128 (:func:`bgwsol.data.shards.imageproc.process_image`).
A mask folder with files that match no image is logged in one line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from bgwsol.data.sources.records import DatasetFormatError, Sample
from bgwsol.data.sources.source_tree import SourceTree

log = logging.getLogger(__name__)
MASK_DIRS = ("segmentations", "masks")  # the official name first


def _read_table(tree: SourceTree, name: str, ncols: int) -> dict[int, tuple[list[str], int]]:
    """``{id: (fields, lineno)}`` of a whitespace table whose first column is an image id."""
    where = tree.where(name)
    out: dict[int, tuple[list[str], int]] = {}
    for lineno, line in enumerate(tree.read_text(name).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=ncols - 1) if ncols > 1 else line.split()
        if len(parts) != ncols or not parts[0].isdigit():
            raise DatasetFormatError(f"{where}:{lineno}: expected {ncols} fields starting with an id, got {line!r}")
        key = int(parts[0])
        if key in out:
            raise DatasetFormatError(f"{where}:{lineno}: id {key} listed twice")
        out[key] = (parts[1:], lineno)
    return out


def read_cub(root: str | Path | SourceTree, split: str) -> tuple[list[Sample], list[str]]:
    """Samples of ``split`` (``"train"`` or ``"test"``) and class names (index = label - 1).

    ``root`` is a local folder or an ``s3://`` prefix; ``images/`` and ``masks/`` are listed once.
    """
    if split not in ("train", "test"):
        raise ValueError(f"CUB split must be 'train' or 'test', got {split!r}")
    tree = SourceTree(root)
    classes_t = _read_table(tree, "classes.txt", 2)
    class_names = [classes_t[k][0][0] for k in sorted(classes_t)]
    images = _read_table(tree, "images.txt", 2)
    labels = _read_table(tree, "image_class_labels.txt", 2)
    splits = _read_table(tree, "train_test_split.txt", 2)
    boxes = _read_table(tree, "bounding_boxes.txt", 5)
    present = set(tree.files("images"))
    masks = {rel: f"{d}/{rel}" for d in reversed(MASK_DIRS) for rel in tree.files(d) if rel.lower().endswith(".png")}
    want = 1 if split == "train" else 0
    samples: list[Sample] = []
    for image_id, (fields, lineno) in sorted(images.items()):
        rel = fields[0]
        for table, name in ((labels, "image_class_labels.txt"), (splits, "train_test_split.txt"),
                            (boxes, "bounding_boxes.txt")):
            if image_id not in table:
                raise DatasetFormatError(f"{tree.where(name)}: no row for image {image_id} "
                                         f"({tree.where('images.txt')}:{lineno})")
        if int(splits[image_id][0][0]) != want:
            continue
        label_fields, label_line = labels[image_id]
        label = int(label_fields[0]) - 1
        if not 0 <= label < len(class_names):
            raise DatasetFormatError(f"{tree.where('image_class_labels.txt')}:{label_line}: class {label + 1} "
                                     "not in classes.txt")
        box_fields, box_line = boxes[image_id]
        problem, box = "", np.zeros((1, 4), np.int64)
        try:
            x, y, w, h = (float(v) for v in box_fields)
            box = np.array([[int(x), int(y), int(x + w), int(y + h)]], np.int64)
            if w <= 0 or h <= 0:
                problem = f"{tree.where('bounding_boxes.txt')}:{box_line}: empty or inverted box (w={w:g}, h={h:g})"
        except ValueError:
            problem = f"{tree.where('bounding_boxes.txt')}:{box_line}: non-numeric box {box_fields}"
        if rel not in present:
            problem = f"{tree.where('images.txt')}:{lineno}: image {tree.where('images/' + rel)} not found"
        mask = os.path.splitext(rel)[0] + ".png"
        samples.append(Sample(rel, tree.path(f"images/{rel}"), label, box,
                              mask_path=tree.path(masks[mask]) if mask in masks else None, source="cub",
                              problem=problem))
    if not samples:
        raise DatasetFormatError(f"{tree.url}: no images in split {split!r}")
    if masks and split == "train":  # said once per source, not per split
        wanted = {os.path.splitext(fields[0])[0] + ".png" for fields, _ in images.values()}
        if not wanted & set(masks):
            first = sorted(masks)[0]
            log.warning("%s: %d mask files match no image in images.txt (e.g. %s); expected "
                        "segmentations/<class>/<image>.png beside images/<class>/<image>.jpg: no PxAP",
                        tree.where(masks[first].split("/")[0]), len(masks), tree.where(masks[first]))
    return samples, class_names
