"""Train / validation / test splits over reader samples, and image sizes."""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bgwsol.data.records import DatasetFormatError, Sample, check_boxes_inside


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


def with_sizes(samples: list[Sample]) -> list[Sample]:
    """Fill in ``size`` from each image's header and check every box lies inside the image.

    A local file is opened and only its header parsed; an ``s3://`` image is fetched whole.
    """
    from bgwsol.data.source_tree import image_file

    out = []
    for s in samples:
        try:
            with Image.open(image_file(s.path)) as im:
                size = im.size
        except (OSError, SyntaxError) as exc:
            raise DatasetFormatError(f"{s.path}: cannot read image header ({exc})") from None
        check_boxes_inside(s.boxes, size, f"{s.path} ({s.image_id})")
        out.append(dataclasses.replace(s, size=size))
    return out


@dataclass(frozen=True)
class Splits:
    """Train, validation and test samples of one dataset plus the background set."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    background: list[Sample]
    classes: list[str]


def read_dataset(dataset: str, root: str | Path) -> tuple[list[Sample], list[Sample], list[str], list[str]]:
    """``(train, test, classes, class_names)`` of a dataset in its own layout (``ilsvrc`` or ``cub``).

    ``root`` is a local folder or an ``s3://`` prefix. ``classes`` are what shards record per
    sample (ILSVRC wnids, CUB class folder names); ``class_names`` are for people (ILSVRC
    descriptions).
    """
    from bgwsol.data.cub import read_cub
    from bgwsol.data.ilsvrc import read_ilsvrc, read_synset_mapping

    from bgwsol.data.source_tree import SourceTree

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


def load_splits(dataset: str, root: str | Path, background: str | Path | None, val_fraction: float) -> Splits:
    """Read a dataset in its own layout and carve the validation split from its train split."""
    from bgwsol.data.background import read_background_folder

    train, test, classes, _names = read_dataset(dataset, root)
    train, val = hold_out(train, val_fraction)
    if not val:
        raise DatasetFormatError(f"{root}: no boxed train images to hold out as validation (val_fraction={val_fraction})")
    bg = read_background_folder(background) if background else []
    return Splits(train, with_sizes(val), with_sizes(test), bg, classes)
