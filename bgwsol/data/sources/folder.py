"""Reader of your own photos: one folder per class (torchvision's ``ImageFolder`` layout), and boxes
for some of them from an annotation tool (Pascal VOC XML or COCO JSON).

Layout (a local folder or an ``s3://`` prefix)::

    root/<class>/<image>.jpg            every image; class names are the folder names, sorted
    root/<class>/<image>.xml            VOC XML beside its image (LabelImg, CVAT, Label Studio,
                                        Roboflow "Pascal VOC" exports), or
    root/annotations/**/<image>.xml     in a parallel tree (matched by the image's file stem), or
    root/annotations.json               one COCO JSON file (CVAT, Label Studio, Roboflow "COCO")

Splits: images with at least one box of their own class form the evaluation pool, divided by
the SHA-1 of their image id: a ``val_fraction`` share is validation, the rest test. Every other
image trains, without boxes. A separate evaluation tree in the same layout (``eval_root``,
``--eval_source``: a test set labelled apart) gives the split instead: its boxed images are
test, and the boxed images of the training tree are validation.

A fully annotated folder (an annotation tool's whole export) would leave nothing to train on, and
WSOL trains on image labels alone, so a boxed image can train like any other (its boxes unused
in training). In a class whose boxed images outnumber its unboxed ones, a ``boxed_train_share``
of them trains (the lowest SHA-1 of ``"train:" + image id``, so reruns agree and the draw is
independent of the validation/test one), as long as at least ``eval_min_per_class`` boxed
images per evaluation split remain in that class. A class mostly without boxes keeps every
boxed image for evaluation, as before.
An image keeps every box of its class (MaxBoxAcc takes the best match); boxes of other
classes (a person holding the fruit) are ignored and counted.

Coordinate conventions, as the tools write them:

- VOC ``<bndbox>``: ``xmin ymin xmax ymax`` are 1-based pixel indices, both ends inside the box
  (the Pascal VOC devkit's convention, which LabelImg, CVAT and Roboflow follow), so the
  0-based inclusive corners used here are each minus 1. A tool that wrote 0-based corners
  loses one pixel at the left and top; a box at the edge then reaches -1, which is clipped
  and counted like any box past the edge. Floats are rounded.
- COCO ``bbox``: ``[x, y, width, height]`` in continuous 0-based pixel coordinates (floats):
  the inclusive corners are ``floor(x), floor(y), ceil(x + width) - 1, ceil(y + height) - 1``.
- An XML ``<size>`` that disagrees with the image: the image's real size wins (boxes are
  checked against it) and the case is counted. An XML ``<filename>`` that names another file:
  the annotation belongs to the image it sits beside (or whose stem it bears), counted.
- A COCO category that names no class folder: its boxes are ignored, counted.

What was found is in :class:`FolderCounts`; the shard flows record it in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from bgwsol.data.sources.records import DatasetFormatError, Sample
from bgwsol.data.sources.source_tree import SourceTree, image_file, read_source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ANNOTATIONS_DIR = "annotations"
COCO_FILE = "annotations.json"


@dataclass
class FolderCounts:
    """What the reader found besides the images, for the manifest and the console."""

    images: int = 0
    boxed_images: int = 0
    boxes: int = 0
    other_class_boxes: int = 0          # boxes naming another class than the image's folder
    boxed_only_other_classes: int = 0   # images whose annotation has no box of their own class
    size_mismatches: int = 0            # XML <size> differs from the image: the image wins
    filename_mismatches: int = 0        # XML <filename> names another file
    unknown_categories: Counter = field(default_factory=Counter)  # COCO category -> boxes ignored
    eval_images: int = 0                # --eval_source: images in the evaluation tree
    eval_unboxed: int = 0               # ... of them without a box of their class (not used)
    eval_also_in_train: int = 0         # ... of them with an id (<class>/<file>) that the training tree has too
    boxed_train: int = 0                # boxed images that train (their boxes unused), see boxed_to_train

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "unknown_categories"}
        out["unknown_categories"] = dict(sorted(self.unknown_categories.items()))
        return out


@dataclass
class _Annotation:
    boxes: list[tuple[str, list[int]]]   # (class name, inclusive 0-based corners)
    where: str                           # the file (and entry) that holds it, for messages
    size: tuple[int, int] | None = None  # what the file says the image measures
    filename: str = ""                   # what the file says the image is called
    problem: str = ""


def voc_corners(xmin: float, ymin: float, xmax: float, ymax: float) -> list[int]:
    """VOC's 1-based inclusive pixel indices -> 0-based inclusive corners."""
    return [int(round(xmin)) - 1, int(round(ymin)) - 1, int(round(xmax)) - 1, int(round(ymax)) - 1]


def coco_corners(x: float, y: float, w: float, h: float) -> list[int]:
    """COCO's continuous ``[x, y, width, height]`` -> 0-based inclusive pixel corners."""
    return [int(math.floor(x)), int(math.floor(y)), int(math.ceil(x + w)) - 1, int(math.ceil(y + h)) - 1]


def parse_voc(text: str, where: str) -> _Annotation:
    """One VOC XML file; a file that is not VOC XML gives an annotation with a ``problem``."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        return _Annotation([], where, problem=f"{where}: not XML ({exc})")
    if root.tag != "annotation":
        return _Annotation([], where, problem=f"{where}: not a VOC annotation (root <{root.tag}>)")
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    try:
        if w and h and float(w) > 0 and float(h) > 0:
            size = (int(float(w)), int(float(h)))
    except ValueError:
        pass
    boxes = []
    for i, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        try:
            corners = voc_corners(*(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")))
        except (TypeError, ValueError):
            return _Annotation([], where, problem=f"{where}: object {i} ({name or 'no name'}) has no numeric <bndbox>")
        boxes.append((name, corners))
    return _Annotation(boxes, where, size, (root.findtext("filename") or "").strip())


def parse_coco(text: str, where: str, classes: list[str], counts: FolderCounts) -> dict[str, _Annotation]:
    """``{file name as COCO lists it: annotation}`` of one COCO JSON file; raises on a broken file."""
    try:
        coco = json.loads(text)
        categories = {int(c["id"]): str(c["name"]).strip() for c in coco["categories"]}
        images = {int(im["id"]): im for im in coco["images"]}
        annotations = coco["annotations"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetFormatError(f"{where}: not a COCO detection file ({type(exc).__name__}: {exc})") from None
    known = set(classes)
    out = {str(im["file_name"]): _Annotation([], f"{where} (image id {i})",
                                             (int(im["width"]), int(im["height"])) if im.get("width") else None)
           for i, im in images.items()}
    for k, a in enumerate(annotations):
        try:
            image = images[int(a["image_id"])]
            name = categories[int(a["category_id"])]
            corners = coco_corners(*(float(v) for v in a["bbox"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetFormatError(f"{where}: annotation {k} ({a.get('id', '?')}) is broken: "
                                     f"{type(exc).__name__}: {exc}") from None
        if name not in known:
            counts.unknown_categories[name] += 1
            continue
        out[str(image["file_name"])].boxes.append((name, corners))
    return out


def in_eval_pool(image_id: str, val_fraction: float) -> str:
    """``"val"`` or ``"test"`` for a boxed image, by the SHA-1 of its id (reruns agree). Not CRC32:
    it is linear, and ids that differ in a few digits (``kangaroo_00003.jpg``) get clustered
    values, so a 0.25 share gave 46 % of one real set."""
    digest = int.from_bytes(hashlib.sha1(image_id.encode()).digest()[:8], "big")
    return "val" if digest < int(val_fraction * 2**64) else "test"


def train_draw(image_id: str) -> int:
    """The SHA-1 order in which a class's boxed images are moved to training (independent of
    :func:`in_eval_pool`'s, which hashes the bare id)."""
    return int.from_bytes(hashlib.sha1(f"train:{image_id}".encode()).digest()[:8], "big")


def boxed_to_train(unboxed: list[Sample], boxed: list[Sample], share: float, min_per_split: int,
                   eval_splits: int) -> tuple[list[Sample], list[Sample]]:
    """``(boxed images that train, boxed images that evaluate)``: per class whose boxed images
    outnumber its unboxed ones, ``floor(share * boxed)`` train, but never so many that fewer than
    ``min_per_split * eval_splits`` remain for evaluation (module docstring)."""
    unboxed_per_class = Counter(s.label for s in unboxed)
    by_class: dict[int, list[Sample]] = {}
    for sample in boxed:
        by_class.setdefault(sample.label, []).append(sample)
    train, keep = [], []
    for label, samples in by_class.items():
        moved = 0
        if len(samples) > unboxed_per_class[label]:
            moved = max(0, min(math.floor(share * len(samples)), len(samples) - min_per_split * eval_splits))
        ordered = sorted(samples, key=lambda s: train_draw(s.image_id))
        train += ordered[:moved]
        keep += ordered[moved:]
    order = {s.image_id: i for i, s in enumerate(boxed)}  # the evaluation pool keeps the reader's order
    return sorted(train, key=lambda s: order[s.image_id]), sorted(keep, key=lambda s: order[s.image_id])


def _real_size(path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(image_file(path)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - the ETL rejects an unreadable image with its reason
        return None


def read_folder(root: str | Path | SourceTree, val_fraction: float = 0.5,
                eval_root: str | Path | SourceTree | None = None, boxed_train_share: float = 0.6,
                eval_min_per_class: int = 10
                ) -> tuple[list[Sample], list[Sample], list[Sample], list[str], FolderCounts]:
    """``(train, val, test, classes, counts)`` of a class-folder tree (module docstring).

    ``boxed_train_share`` and ``eval_min_per_class``: how much of a mostly boxed class trains
    (:func:`boxed_to_train`; a share of 0 keeps every boxed image for evaluation).

    With ``eval_root`` (a second tree in the same layout, ``--eval_source``) the split is given
    instead of drawn: every boxed image of ``eval_root`` is test, every boxed image of ``root``
    is validation, and ``val_fraction`` is not used. Images of ``eval_root`` without a box of
    their class are not used (counted).

    Raises :class:`DatasetFormatError` in one line for what the user got wrong: no class
    folders (``root`` pointing at one class folder or at the parent of the dataset), images
    directly under ``root``, no image with a box of its class (nothing to choose thresholds on),
    or an evaluation tree with a class folder that ``root`` does not have.
    """
    tree = SourceTree(root)
    listed = _class_images(tree)
    classes = sorted(listed[0])
    if len(classes) < 2:
        raise DatasetFormatError(f"{tree.url}: one class folder ({classes[0]}): a classifier needs at least two "
                                 "(is --source one class folder instead of their parent?)")
    counts = FolderCounts()
    train, boxed = _label(tree, listed, classes, counts)
    counts.images, counts.boxed_images = len(train) + len(boxed), len(boxed)
    if not boxed and eval_root is None:
        raise DatasetFormatError(f"{tree.url}: no image has a box of its own class (VOC XML beside the images or "
                                 f"under {ANNOTATIONS_DIR}/, or {COCO_FILE}): nothing to validate and test on")
    if not boxed:
        raise DatasetFormatError(f"{tree.url}: no image has a box of its own class; with --eval_source those are the "
                                 "validation split (thresholds are chosen on it, never on the test split)")
    boxed_train, boxed = boxed_to_train(train, boxed, boxed_train_share, eval_min_per_class,
                                        eval_splits=2 if eval_root is None else 1)
    counts.boxed_train = len(boxed_train)
    train = train + boxed_train
    if eval_root is None:
        pool = {"val": [], "test": []}
        for sample in boxed:  # each id hashed once
            pool[in_eval_pool(sample.image_id, val_fraction)].append(sample)
        return train, pool["val"], pool["test"], classes, counts
    eval_tree = SourceTree(eval_root)
    eval_listed = _class_images(eval_tree)
    unknown = sorted(set(eval_listed[0]) - set(classes))
    if unknown:
        raise DatasetFormatError(f"{eval_tree.where(unknown[0])}: a class folder that {tree.url} does not have "
                                 f"({len(unknown)} such: {', '.join(unknown[:3])}); the classes are the training "
                                 "tree's folders")
    unboxed, test = _label(eval_tree, eval_listed, classes, counts)
    counts.eval_images, counts.eval_unboxed = len(unboxed) + len(test), len(unboxed)
    counts.eval_also_in_train = len({s.image_id for s in test} & {s.image_id for s in train + boxed})
    if not test:
        raise DatasetFormatError(f"{eval_tree.url}: no image has a box of its own class: nothing to test on")
    return train, boxed, test, classes, counts


def _class_images(tree: SourceTree) -> tuple[dict[str, list[str]], list[str]]:
    """``({class folder: [<class>/<image>, ...]}, every file)`` of a tree; one-line errors for a wrong root."""
    if not tree.exists():
        raise DatasetFormatError(f"{tree.url}: no such folder")
    files = tree.files("")
    images: dict[str, list[str]] = {}
    loose = []
    for rel in files:
        parts = rel.split("/")
        if parts[0] == ANNOTATIONS_DIR or not rel.lower().endswith(IMAGE_SUFFIXES):
            continue
        if len(parts) == 1:
            loose.append(rel)
        elif len(parts) == 2:
            images.setdefault(parts[0], []).append(rel)
        # deeper files: a parent of the class folders, caught below when nothing is at depth 2
    if loose:
        raise DatasetFormatError(f"{tree.where(loose[0])}: an image directly under the root; put each image in "
                                 f"a folder named after its class ({len(loose)} loose images)")
    if not images:
        deeper = sorted({rel.split("/")[0] for rel in files if rel.lower().endswith(IMAGE_SUFFIXES)})
        hint = (f"; the images are one level deeper, under {', '.join(deeper[:3])}: point --source there"
                if deeper else "")
        raise DatasetFormatError(f"{tree.url}: no class folders with images (expected <class>/<image>){hint}")
    return images, files


def _label(tree: SourceTree, listed: tuple[dict[str, list[str]], list[str]], classes: list[str],
           counts: FolderCounts) -> tuple[list[Sample], list[Sample]]:
    """``(unboxed, boxed)`` samples of a tree's images (``listed``: :func:`_class_images`); boxed
    ones carry every box of their class."""
    images, files = listed
    annotations = _annotations(tree, files, classes, counts)
    label = {c: i for i, c in enumerate(classes)}
    unboxed, boxed = [], []
    for cls in sorted(images):
        for rel in images[cls]:
            stem = os.path.splitext(rel)[0]
            name = rel.split("/")[1]
            ann = annotations.get(rel) or annotations.get(stem) or annotations.get(name) or \
                annotations.get(os.path.splitext(name)[0])
            path = tree.path(rel)
            if ann is None or ann.problem:
                unboxed.append(Sample(rel, path, label[cls], source="folder", problem=ann.problem if ann else ""))
                continue
            own = [corners for box_class, corners in ann.boxes if box_class == cls]
            counts.other_class_boxes += len(ann.boxes) - len(own)
            if not own:
                counts.boxed_only_other_classes += bool(ann.boxes)
                unboxed.append(Sample(rel, path, label[cls], source="folder"))
                continue
            if ann.filename and ann.filename not in (name, rel) and os.path.splitext(ann.filename)[0] != \
                    os.path.splitext(name)[0]:
                counts.filename_mismatches += 1
            real = _real_size(path)
            if real is not None and ann.size is not None and real != ann.size:
                counts.size_mismatches += 1
            boxed.append(Sample(rel, path, label[cls], np.array(own, dtype=np.int64).reshape(-1, 4),
                                size=real or (0, 0), source="folder"))
            counts.boxes += len(own)
    return unboxed, boxed


def _annotations(tree: SourceTree, files: list[str], classes: list[str], counts: FolderCounts
                 ) -> dict[str, _Annotation]:
    """Annotations keyed by what they name: ``<class>/<file>`` and the stem for VOC files beside
    their images or in the parallel tree, the COCO ``file_name`` (and its base name) for COCO."""
    found: dict[str, _Annotation] = {}
    for rel in files:
        if not rel.lower().endswith(".xml"):
            continue
        ann = parse_voc(read_source(tree.path(rel)).decode(errors="replace"), tree.where(rel))
        key = os.path.splitext(rel)[0]
        if key.startswith(ANNOTATIONS_DIR + "/"):
            key = key[len(ANNOTATIONS_DIR) + 1:]
            if "/" not in key:  # a flat annotations/ folder: matched by the image's stem alone
                found.setdefault(key, ann)
                continue
        found[key] = ann
    if tree.is_file(COCO_FILE):
        for file_name, ann in parse_coco(tree.read_text(COCO_FILE), tree.where(COCO_FILE), classes, counts).items():
            found[file_name] = ann
            found.setdefault(file_name.rsplit("/", 1)[-1], ann)
    return found
