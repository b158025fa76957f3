"""Do two shard sets hold the same samples, in the same order? (issue #22's proof that the folder
layout trains on exactly what the CUB layout does.)

Per split: each sample's image bytes (SHA-1), label and, outside ``train``, its boxes. Training
reads no box (weak supervision), and the folder layout keeps none for images without one, so
train samples are compared without their boxes.

    python benchmarks/compare_shard_sets.py /tmp/real/shards_cub/cub /tmp/real/shards_folder_eval/folder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile
from pathlib import Path


def samples(shard_dir: Path) -> dict[str, list[tuple]]:
    """``{split: [(image sha1, label, boxes), ...]}`` in shard and member order."""
    found: dict[str, list[tuple]] = {}
    for tar in sorted(shard_dir.glob("*.tar")):
        split = tar.name.split("-")[0]
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = t.extractfile(m).read()
        for parts in members.values():
            meta = json.loads(parts["json"])
            boxes = "" if split == "train" else json.dumps(meta.get("boxes"))
            found.setdefault(split, []).append((hashlib.sha1(parts["jpg"]).hexdigest(), meta.get("label"), boxes))
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    args = p.parse_args()
    a, b = samples(args.first), samples(args.second)
    same = True
    for split in sorted(set(a) | set(b)):
        ra, rb = a.get(split, []), b.get(split, [])
        verdict = ("the same samples in the same order" if ra == rb else
                   "the same samples in another order" if sorted(ra) == sorted(rb) else "different samples")
        same &= ra == rb
        print(f"{split}: {len(ra)} and {len(rb)} samples, {verdict}")
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
