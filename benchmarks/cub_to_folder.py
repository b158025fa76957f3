"""Write a dataset in CUB's layout out as the ``folder`` layout: class folders plus VOC XML (or one
COCO JSON), as an annotation tool would have exported it. For checking the folder layout on
real photos (``../shared/realdata/animals_cub``) against the CUB layout.

Boxes are written only for the images the CUB layout validates and tests on (its test split
and the validation it holds out of train with ``--val_fraction``); the other train images get
none, as a team's unlabelled photos. Class folders keep CUB's folder names, so image ids
(``<class>/<file>``) and classes are CUB's.

- One tree (``--output``): the folder layout splits the boxed images into validation and test by
  image id itself, so its split is not CUB's: the same boxed images, another membership.
- With ``--eval_output``: CUB's test images go to a second tree, for ``--eval_source``. The
  folder layout then takes the split as given (boxed images of the training tree validate, the
  evaluation tree tests), and every split is CUB's, member for member.

    python benchmarks/cub_to_folder.py --source ../shared/realdata/animals_cub --output /tmp/animals_folder
    python benchmarks/cub_to_folder.py --source ../shared/realdata/animals_cub --output /tmp/animals_coco --coco
    python benchmarks/cub_to_folder.py --source ../shared/realdata/animals_cub --output /tmp/animals_train \
        --eval_output /tmp/animals_test
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

from bgwsol.data.sources.cub import read_cub
from bgwsol.data.sources.splits import hold_out


def voc_xml(filename: str, size: tuple[int, int], name: str, boxes) -> str:
    """VOC XML with 1-based inclusive corners (what LabelImg writes)."""
    objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                   f"<xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox></object>" for x0, y0, x1, y1 in boxes)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{objs}</annotation>\n")


def write_tree(samples, classes: list[str], output: Path, boxed: set[str], coco: bool) -> int:
    """Copy ``samples`` into ``output/<class>/<file>``, with VOC XML (or one COCO JSON) for the
    image ids in ``boxed``; returns the number of images written."""
    doc = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for i, c in enumerate(classes)]}
    written = 0
    for s in samples:
        cls = classes[s.label]
        name = Path(s.image_id).name
        target = output / cls / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.path, target)
        written += 1
        if s.image_id not in boxed:
            continue
        with Image.open(target) as im:
            size = im.size
        boxes = [[int(v) for v in b] for b in s.boxes.tolist()]
        if coco:
            image_id = len(doc["images"]) + 1
            doc["images"].append({"id": image_id, "file_name": f"{cls}/{name}", "width": size[0], "height": size[1]})
            for x0, y0, x1, y1 in boxes:
                doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                           "category_id": s.label, "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1]})
        else:
            target.with_suffix(".xml").write_text(voc_xml(name, size, cls, boxes))
    if coco:
        output.mkdir(parents=True, exist_ok=True)
        (output / "annotations.json").write_text(json.dumps(doc))
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="a dataset in CUB's layout")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--eval_output", type=Path, help="write CUB's test images here instead (for --eval_source)")
    p.add_argument("--val_fraction", type=float, default=0.15, help="what the CUB layout holds out of train")
    p.add_argument("--coco", action="store_true", help="one annotations.json instead of VOC XML files")
    args = p.parse_args()
    train, classes = read_cub(args.source, "train")
    test, _ = read_cub(args.source, "test")
    train, val = hold_out([s for s in train if not s.problem], args.val_fraction)
    test = [s for s in test if not s.problem]
    boxed = {s.image_id for s in val + test}
    kind = "annotations.json" if args.coco else "VOC XML beside them"
    if args.eval_output:
        n = write_tree(train + val, classes, args.output, boxed, args.coco)
        m = write_tree(test, classes, args.eval_output, boxed, args.coco)
        print(f"{n} images in {len(classes)} class folders under {args.output}, {len(val)} with boxes (validation); "
              f"{m} under {args.eval_output}, all with boxes (test); {kind}")
        return
    n = write_tree(train + val + test, classes, args.output, boxed, args.coco)
    print(f"{n} images in {len(classes)} class folders under {args.output}; {len(boxed)} with boxes ({kind})")


if __name__ == "__main__":
    main()
