"""Train / validation / test splits over reader samples, and image sizes."""

from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bgwsol.data.sources.records import DatasetFormatError, InvalidBox, Sample, fit_boxes
from bgwsol.data.sources.rejects import DEFAULT_MAX_SHARE, annotation_reject, check_share, reject

log = logging.getLogger(__name__)


def hold_out(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Split ``samples`` into (train, validation), deterministically by image id.

    Only samples with boxes can validate localization, so validation is drawn from those;
    the choice depends on the id's CRC32, not on order or on the set of other files.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    cut = int(fraction * 2**32)
    val = [s for s in samples if len(s.boxes) and zlib.crc32(s.image_id.encode()) < cut]
    val_ids = {s.image_id for s in val}
    return [s for s in samples if s.image_id not in val_ids], val


@dataclass
class Checked:
    """Samples that passed :func:`with_sizes`, the rejects report of those that did not, and how
    many boxes were clipped to their image's edge."""

    samples: list[Sample]
    rejects: list[dict]
    clipped_boxes: int = 0


def with_sizes(samples: list[Sample], split: str = "") -> Checked:
    """Fill in ``size`` from each image's header and fit every box to its image.

    A box that reaches the edge is clipped and counted; a sample whose reader found a problem,
    whose header cannot be read or whose box is invalid (:func:`~bgwsol.data.sources.records.fit_boxes`)
    goes to the rejects report. A local file is opened and only its header parsed; an ``s3://``
    image is fetched whole.
    """
    from bgwsol.data.sources.source_tree import image_file

    out, rejects, clipped = [], [], 0
    for s in samples:
        if s.problem:
            rejects.append(annotation_reject(s.image_id, str(s.path), s.problem, split))
            continue
        try:
            with Image.open(image_file(s.path)) as im:
                size = im.size
            boxes, n = fit_boxes(s.boxes, size)
        except (OSError, SyntaxError) as exc:
            rejects.append(reject(s.image_id, str(s.path), f"cannot read image header: {exc}", split))
            continue
        except InvalidBox as exc:
            rejects.append(reject(s.image_id, str(s.path), f"bad box: {exc}", split))
            continue
        clipped += n
        out.append(dataclasses.replace(s, size=size, boxes=boxes))
    return Checked(out, rejects, clipped)


@dataclass(frozen=True)
class Splits:
    """Train, validation and test samples of one dataset plus the background set."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    background: list[Sample]
    classes: list[str]
    rejects: list[dict] = dataclasses.field(default_factory=list)
    clipped_boxes: int = 0


def read_dataset(dataset: str, root: str | Path) -> tuple[list[Sample], list[Sample], list[str], list[str]]:
    """``(train, test, classes, class_names)`` of a dataset in its own layout (``ilsvrc`` or ``cub``).

    ``root`` is a local folder or an ``s3://`` prefix. ``classes`` are what shards record per
    sample (ILSVRC wnids, CUB class folder names); ``class_names`` are for people (ILSVRC
    descriptions).
    """
    from bgwsol.data.sources.cub import read_cub
    from bgwsol.data.sources.ilsvrc import read_ilsvrc, read_synset_mapping

    from bgwsol.data.sources.source_tree import SourceTree

    if not root:
        raise DatasetFormatError("no dataset root given")
    tree = SourceTree(root)
    if not tree.exists():
        raise DatasetFormatError(f"dataset root {tree.url!r} does not exist")
    if dataset == "ilsvrc":
        train, classes = read_ilsvrc(tree, "train")
        test, _ = read_ilsvrc(tree, "test")
        names = [desc or wnid for wnid, desc in read_synset_mapping(tree)]
    elif dataset == "cub":
        train, classes = read_cub(tree, "train")
        test, _ = read_cub(tree, "test")
        names = list(classes)
    else:
        raise ValueError(f"unknown dataset {dataset!r} (ilsvrc | cub)")
    return train, test, classes, names


def load_splits(dataset: str, root: str | Path, background: str | Path | None, val_fraction: float,
                max_reject_share: float = DEFAULT_MAX_SHARE) -> Splits:
    """Read a dataset in its own layout and carve the validation split from its train split.

    Samples the reader flagged and, in validation and test, images whose header or box is bad
    are left out and listed in ``Splits.rejects``; above ``max_reject_share`` of all samples
    :class:`~bgwsol.data.sources.rejects.TooManyRejects` stops the run.
    """
    from bgwsol.data.sources.background import read_background_folder

    train, test, classes, _names = read_dataset(dataset, root)
    total = len(train) + len(test)
    rejects = [annotation_reject(s.image_id, str(s.path), s.problem, "train") for s in train if s.problem]
    train = [s for s in train if not s.problem]
    train, val = hold_out(train, val_fraction)
    if not val:
        raise DatasetFormatError(f"{root}: no boxed train images to hold out as validation (val_fraction={val_fraction})")
    val_c, test_c = with_sizes(val, "val"), with_sizes(test, "test")
    rejects += val_c.rejects + test_c.rejects
    check_share(rejects, total, max_reject_share, str(root))
    clipped = val_c.clipped_boxes + test_c.clipped_boxes
    if clipped:
        log.info("%s: %d boxes reached past the image edge and were clipped", root, clipped)
    if rejects:
        log.warning("%s: %d of %d samples rejected and left out, e.g. %s: %s", root, len(rejects), total,
                    rejects[0]["path"], rejects[0]["reason"])
    bg = read_background_folder(background) if background else []
    return Splits(train, val_c.samples, test_c.samples, bg, classes, rejects, clipped)
