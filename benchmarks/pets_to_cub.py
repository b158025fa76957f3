"""Write Oxford-IIIT Pet photos (``images/*.jpg``, ``annotations/trimaps/*.png``,
``annotations/trainval.txt`` / ``test.txt``) out in CUB-200-2011's layout with ``segmentations/``:
a real set with real masks, for PxAP (issue #28).

The source used for BENCHMARKS.md is the public ``Naveen-Dodda/Sample_Pets_dataset`` repository
(3 breeds of the Oxford-IIIT Pet dataset, 598 listed photos, a trimap for each); its own boxes
are head boxes, not object boxes, so the object box here is derived from the trimap.

- Mask: the trimap's pet (1) and its border (3, the uncertain outline) are the object, written
  as 255; background (2) is 0.
- Box: the extent of the mask (CUB's ``x y w h`` with ``x + w`` the last object column).
- Split: ``trainval.txt`` is CUB's train (the job holds its validation out of it), ``test.txt``
  is test. Photos in neither list are left out.

    python benchmarks/pets_to_cub.py --source /tmp/pets_raw --output ../shared/realdata/pets_cub
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

PET, BORDER = 1, 3


def listed(path: Path) -> list[str]:
    """Image names of an Oxford-IIIT Pet list file (``<name> <class id> <species> <breed id>``)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, type=Path, help="Oxford-IIIT Pet layout (images/, annotations/)")
    p.add_argument("--output", required=True, type=Path, help="where the CUB-layout set goes")
    args = p.parse_args()
    split = {name: 1 for name in listed(args.source / "annotations/trainval.txt")}
    split |= {name: 0 for name in listed(args.source / "annotations/test.txt")}
    breeds = sorted({name.rsplit("_", 1)[0] for name in split})
    folders = [f"{i + 1:03d}.{b}" for i, b in enumerate(breeds)]
    rows: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes")}
    for image_id, name in enumerate(sorted(split), start=1):
        label = breeds.index(name.rsplit("_", 1)[0])
        rel = f"{folders[label]}/{name}.jpg"
        trimap = np.asarray(Image.open(args.source / "annotations/trimaps" / f"{name}.png"))
        obj = (trimap == PET) | (trimap == BORDER)
        ys, xs = np.nonzero(obj)
        (args.output / "images" / folders[label]).mkdir(parents=True, exist_ok=True)
        (args.output / "segmentations" / folders[label]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.source / "images" / f"{name}.jpg", args.output / "images" / rel)
        Image.fromarray(obj.astype(np.uint8) * 255).save(args.output / "segmentations" / rel.replace(".jpg", ".png"))
        rows["images"].append(f"{image_id} {rel}")
        rows["labels"].append(f"{image_id} {label + 1}")
        rows["split"].append(f"{image_id} {split[name]}")
        rows["boxes"].append(f"{image_id} {xs.min()} {ys.min()} {xs.max() - xs.min()} {ys.max() - ys.min()}")
    (args.output / "classes.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(folders)))
    for key, file in (("images", "images.txt"), ("labels", "image_class_labels.txt"), ("split", "train_test_split.txt"),
                      ("boxes", "bounding_boxes.txt")):
        (args.output / file).write_text("\n".join(rows[key]) + "\n")
    train = sum(split.values())
    print(f"{len(split)} photos of {len(breeds)} breeds ({', '.join(breeds)}) under {args.output}: {train} train, "
          f"{len(split) - train} test, a mask and a mask-derived box for each")


if __name__ == "__main__":
    main()
