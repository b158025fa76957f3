"""Real annotations are messy: boxes that reach the edge load (clipped, counted); one bad sample
goes to the rejects report; too many bad samples stop the job before any work, naming files."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from bgwsol.data.sources.cub import read_cub
from bgwsol.data.shards.etl import ShardConfig, dataset_listings, write_shard_set
from bgwsol.data.sources.records import InvalidBox, fit_boxes
from bgwsol.data.sources.rejects import TooManyRejects


def test_fit_boxes_clips_edge_boxes_and_counts_them():
    boxes, n = fit_boxes(np.array([[89, 48, 722, 406], [0, 0, 10, 10]]), (722, 406))
    assert boxes.tolist() == [[89, 48, 721, 405], [0, 0, 10, 10]] and n == 1
    # a click a few pixels past the edge (within 2 % of the side) is still the edge
    assert fit_boxes(np.array([[-3, 0, 50, 50]]), (200, 100))[0].tolist() == [[0, 0, 50, 50]]
    assert fit_boxes(np.zeros((0, 4)), (5, 5))[1] == 0


@pytest.mark.parametrize("box, why", [
    ([10, 10, 5, 20], "inverted"),
    ([10, 10, 10, 20], "empty"),
    ([0, 0, 300, 50], "outside"),        # 100 px past a 200 px wide image
    ([200, 0, 201, 50], "outside"),      # within the slack, but wholly beyond the right edge
])
def test_fit_boxes_refuses_what_clipping_cannot_save(box, why):
    with pytest.raises(InvalidBox, match=why):
        fit_boxes(np.array([box]), (200, 100))


def _cub_copy(src, dst):
    shutil.copytree(src, dst)
    sizes = {}
    for line in (dst / "images.txt").read_text().splitlines():
        image_id, rel = line.split()
        with Image.open(dst / "images" / rel) as im:
            sizes[int(image_id)] = im.size
    return sizes


def _rewrite_boxes(root, change: dict[int, str]):
    path = root / "bounding_boxes.txt"
    rows = []
    for line in path.read_text().splitlines():
        image_id = int(line.split()[0])
        rows.append(f"{image_id} {change[image_id]}" if image_id in change else line)
    path.write_text("\n".join(rows) + "\n")


def test_cub_edge_boxes_load_and_bad_rows_are_rejected(tiny_synthetic, tmp_path):
    paths, _ = tiny_synthetic
    root = tmp_path / "cub"
    sizes = _cub_copy(paths.cub, root)
    split_of = {int(a): b for a, b in (ln.split() for ln in (root / "train_test_split.txt").read_text().splitlines())}
    test_ids = [i for i, v in sorted(split_of.items()) if v == "0"]
    edge, negative, text = test_ids[:3]
    w, h = sizes[edge]
    _rewrite_boxes(root, {edge: f"5 4 {w - 5} {h - 4}",     # x + w = width, y + h = height: the real-data case
                          negative: "10 10 -4 20", text: "10 ten 4 20"})
    test, _ = read_cub(root, "test")
    problems = {s.image_id: s.problem for s in test if s.problem}
    assert len(problems) == 2 and all("bounding_boxes.txt:" in p for p in problems.values())
    (edge_sample,) = [s for s in test if s.image_id not in problems and s.boxes.tolist() == [[5, 4, w, h]]]
    clipped, count = fit_boxes(edge_sample.boxes, (w, h))  # what the ETL does with it
    assert clipped.tolist() == [[5, 4, w - 1, h - 1]] and count == 1


def test_too_many_rejects_stop_before_any_work_naming_the_files(tiny_synthetic, tmp_path):
    paths, _ = tiny_synthetic
    root = tmp_path / "cub"
    _cub_copy(paths.cub, root)
    ids = [int(ln.split()[0]) for ln in (root / "images.txt").read_text().splitlines()]
    _rewrite_boxes(root, {i: "10 10 0 0" for i in ids[:3]})  # three empty boxes
    listings, classes, _ = dataset_listings("cub", str(root), 0.3)
    out = tmp_path / "shards"
    with pytest.raises(TooManyRejects, match=r"3 of \d+ samples rejected .*first: .*empty or inverted box"):
        write_shard_set(listings, str(out), dataset="cub", classes=classes, cfg=ShardConfig(max_reject_share=0.01))
    assert not out.exists()  # refused before the prefix was even touched


@pytest.mark.ray
def test_etl_clips_edge_boxes_rejects_one_bad_row_and_commits(tiny_synthetic, ray_local, tmp_path):
    paths, _ = tiny_synthetic
    root = tmp_path / "cub"
    sizes = _cub_copy(paths.cub, root)
    ids = sorted(sizes)
    w, h = sizes[ids[0]]
    _rewrite_boxes(root, {ids[0]: f"0 0 {w} {h}", ids[1]: "3 3 -1 5"})
    listings, classes, _ = dataset_listings("cub", str(root), 0.3)
    cfg = ShardConfig(max_short_side=48, samples_per_shard=7, max_reject_share=0.1)
    shards = write_shard_set(listings, str(tmp_path / "out"), dataset="cub", classes=classes, cfg=cfg)
    total = sum(len(x.rows) for x in listings)
    assert sum(shards.count(s) for s in shards.splits) == total - 1
    assert shards.manifest["clipped_boxes"] == 1
    assert shards.manifest["rejects"]["by_reason"] == {"bad annotation": 1}
    (rej,) = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert "bounding_boxes.txt:2: empty or inverted box" in rej["reason"]
