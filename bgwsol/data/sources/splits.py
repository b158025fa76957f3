"""A dataset read in its own layout, and the validation split held out of its train split."""

from __future__ import annotations

import zlib
from pathlib import Path

from bgwsol.data.sources.records import DatasetFormatError, Sample


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
