"""Your own photos: class folders plus boxes as LabelImg / CVAT / Roboflow export them (VOC XML,
COCO JSON), with their real quirks; and the one-line errors for what users get wrong."""

import json

import pytest
from PIL import Image

from bgwsol.data.sources.folder import coco_corners, read_folder, voc_corners
from bgwsol.data.sources.records import DatasetFormatError


def photo(path, size=(60, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path, quality=85)


def voc(path, filename: str, size, objects: list[tuple[str, tuple]]):
    """A VOC XML as LabelImg writes it (1-based corners, <size>, <filename>)."""
    objs = "".join(f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
                   f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
                   "</object>" for n, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>x</folder><filename>{filename}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def test_conventions_of_the_tools():
    assert voc_corners(1, 1, 60, 40) == [0, 0, 59, 39]          # the whole 60x40 image, 1-based
    assert voc_corners(10.6, 5.2, 20.4, 9.5) == [10, 4, 19, 9]  # CVAT writes floats: rounded
    assert coco_corners(0.0, 0.0, 60.0, 40.0) == [0, 0, 59, 39]  # continuous [x, y, w, h]
    assert coco_corners(10.5, 4.2, 9.1, 5.0) == [10, 4, 19, 9]


def test_voc_beside_the_images(tmp_path):
    root = tmp_path / "fruit"
    for i in range(12):
        photo(root / "apple" / f"a{i}.jpg")
        photo(root / "pear" / f"p{i}.jpg")
    # two apples, and a person holding them (a class that is not trained): both apples kept
    voc(root / "apple/a0.xml", "a0.jpg", (60, 40), [("apple", (1, 1, 20, 20)), ("apple", (30, 5, 60, 40)),
                                                     ("person", (1, 1, 60, 40))])
    voc(root / "apple/a1.xml", "IMG_0001.jpg", (120, 80), [("apple", (0, 0, 10, 10))])  # wrong name and size
    voc(root / "pear/p0.xml", "p0.jpg", (60, 40), [("apple", (5, 5, 15, 15))])  # only another class
    voc(root / "pear/p1.xml", "p1.jpg", (60, 40), [("pear", (2, 3, 40, 30))])
    train, val, test, classes, counts = read_folder(root, val_fraction=0.5)
    assert classes == ["apple", "pear"]
    boxed = {s.image_id: s for s in val + test}
    assert set(boxed) == {"apple/a0.jpg", "apple/a1.jpg", "pear/p1.jpg"}
    assert boxed["apple/a0.jpg"].boxes.tolist() == [[0, 0, 19, 19], [29, 4, 59, 39]]
    assert boxed["apple/a1.jpg"].boxes.tolist() == [[-1, -1, 9, 9]]  # a 0-based tool: clipped later, counted
    assert boxed["pear/p1.jpg"].label == 1 and boxed["pear/p1.jpg"].size == (60, 40)
    assert len(train) == 24 - 3 and all(len(s.boxes) == 0 for s in train)
    assert counts.other_class_boxes == 2 and counts.boxed_only_other_classes == 1
    assert counts.size_mismatches == 1 and counts.filename_mismatches == 1 and counts.boxes == 4
    again = read_folder(root, val_fraction=0.5)  # the split depends on the image ids only
    assert [s.image_id for s in again[1]] == [s.image_id for s in val]


def test_a_parallel_voc_tree_and_a_broken_file(tmp_path):
    root = tmp_path / "data"
    for c in ("cat", "dog"):
        for i in range(3):
            photo(root / c / f"{c}{i}.png")
        voc(root / "annotations" / c / f"{c}0.xml", f"{c}0.png", (60, 40), [(c, (5, 5, 30, 30))])
    (root / "annotations/dog/dog1.xml").write_text("<annotation><object><name>dog</name></object>")
    train, val, test, _, counts = read_folder(root)
    assert sorted(s.image_id for s in val + test) == ["cat/cat0.png", "dog/dog0.png"]
    broken = [s for s in train if s.problem]
    assert [s.image_id for s in broken] == ["dog/dog1.png"] and "dog1.xml: not XML" in broken[0].problem


def test_coco_json(tmp_path):
    root = tmp_path / "coco"
    for c in ("raccoon", "kangaroo"):
        for i in range(2):
            photo(root / c / f"{c}{i}.jpg")
    coco = {"images": [{"id": 1, "file_name": "raccoon0.jpg", "width": 60, "height": 40},
                       {"id": 2, "file_name": "kangaroo/kangaroo1.jpg", "width": 60, "height": 40}],
            "categories": [{"id": 0, "name": "animals"}, {"id": 1, "name": "raccoon"}, {"id": 2, "name": "kangaroo"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2.5, 3.0, 20.0, 10.0]},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 60, 40]},
                            {"id": 3, "image_id": 2, "category_id": 0, "bbox": [0, 0, 5, 5]}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    train, val, test, classes, counts = read_folder(root)
    boxed = {s.image_id: s.boxes.tolist() for s in val + test}
    assert boxed == {"raccoon/raccoon0.jpg": [[2, 3, 22, 12]], "kangaroo/kangaroo1.jpg": [[0, 0, 59, 39]]}
    assert counts.unknown_categories == {"animals": 1} and len(train) == 2
    (root / "annotations.json").write_text('{"images": []}')
    with pytest.raises(DatasetFormatError, match=r"annotations.json: not a COCO detection file"):
        read_folder(root)


def test_a_test_set_labelled_apart(tmp_path):
    """``--eval_source``: the evaluation tree's boxed images are the test split, the training
    tree's boxed images validation; whatever the evaluation tree cannot be used for is counted."""
    root, held = tmp_path / "train", tmp_path / "test"
    for c in ("apple", "pear"):
        for i in range(4):
            photo(root / c / f"{c}{i}.jpg")
            photo(held / c / f"t{c}{i}.jpg")
            voc(held / c / f"t{c}{i}.xml", f"t{c}{i}.jpg", (60, 40), [(c, (2, 2, 30, 30))])
        voc(root / c / f"{c}0.xml", f"{c}0.jpg", (60, 40), [(c, (5, 5, 20, 20))])
    photo(held / "pear/unboxed.jpg")
    photo(held / "apple/apple1.jpg")  # the same id as a training image
    voc(held / "apple/apple1.xml", "apple1.jpg", (60, 40), [("apple", (1, 1, 9, 9))])
    train, val, test, classes, counts = read_folder(root, val_fraction=0.99, eval_root=held)
    assert classes == ["apple", "pear"]
    assert sorted(s.image_id for s in val) == ["apple/apple0.jpg", "pear/pear0.jpg"]  # not by val_fraction
    assert len(test) == 9 and all(s.path.parent.parent == held for s in test)
    assert len(train) == 6 and counts.boxed_images == 2
    assert (counts.eval_images, counts.eval_unboxed, counts.eval_also_in_train) == (10, 1, 1)
    photo(held / "plum/x.jpg")
    with pytest.raises(DatasetFormatError, match=r"plum: a class folder that .*train does not have"):
        read_folder(root, eval_root=held)
    (held / "plum/x.jpg").unlink()
    for c in ("apple", "pear"):
        (root / c / f"{c}0.xml").unlink()
    with pytest.raises(DatasetFormatError, match=r"with --eval_source those are the validation split"):
        read_folder(root, eval_root=held)


@pytest.mark.parametrize("case, message", [
    ("parent", r"the images are one level deeper, under fruit: point --source there"),
    ("one_class", r"one class folder \(apple\)"),
    ("loose", r"an image directly under the root"),
    ("no_boxes", r"no image has a box of its own class"),
])
def test_what_users_get_wrong_is_one_line(tmp_path, case, message):
    root = tmp_path / "set"
    if case == "parent":
        photo(root / "fruit/apple/a.jpg")
        photo(root / "fruit/pear/p.jpg")
    elif case == "one_class":
        photo(root / "apple/a.jpg")
    elif case == "loose":
        photo(root / "a.jpg")
        photo(root / "apple/b.jpg")
    else:
        photo(root / "apple/a.jpg")
        photo(root / "pear/p.jpg")
    with pytest.raises(DatasetFormatError, match=message) as err:
        read_folder(root)
    assert "\n" not in str(err.value)


@pytest.mark.ray
def test_shard_folder_flow_writes_splits_and_counts(ray_local, tmp_path):
    """``flows/shard_folder.py`` as a user runs it: VOC beside the images, one 0-based box at the
    edge (clipped and counted), a person box (ignored and counted) — then the manifest."""
    from bgwsol.data.shards.shardset import ShardSet
    from conftest import load_flow

    root = tmp_path / "fruit"
    for i in range(10):
        photo(root / "apple" / f"a{i}.jpg")
        photo(root / "pear" / f"p{i}.jpg")
        voc(root / "apple" / f"a{i}.xml", f"a{i}.jpg", (60, 40), [("apple", (0, 0, 20, 20)), ("person", (1, 1, 9, 9))])
    voc(root / "pear/p0.xml", "p0.jpg", (60, 40), [("pear", (5, 5, 30, 30))])
    out = tmp_path / "shards"
    flow = load_flow("shard_folder")
    assert flow.main(["--source", str(root), "--output", str(out), "--etl.max_short_side", "32",
                      "--log_dir", str(tmp_path / "logs")]) == 0
    shards = ShardSet.open(str(out))
    assert shards.manifest["dataset"] == "folder" and shards.classes == ["apple", "pear"]
    assert shards.count("train") == 9 and shards.count("val") + shards.count("test") == 11
    reader = shards.manifest["reader"]["train"]
    assert reader["other_class_boxes"] == 10 and reader["boxed_images"] == 11 and reader["boxes"] == 11
    assert shards.manifest["clipped_boxes"] == 10  # LabelImg-style 0-based corners at the edge
    assert flow.main(["--output", str(out)]) == 2  # no --source: one line before any work


@pytest.mark.ray
def test_a_folder_tree_in_a_bucket_gives_the_shards_of_its_folder_and_its_bad_file_is_named(ray_local, bucket,
                                                                                             tmp_path):
    """The folder layout from s3:// reads as from the folder (listings, then byte-identical
    shards); an undecodable photo goes to rejects.jsonl by its URL, and above
    ``max_reject_share`` the run stops before a manifest is written."""
    from bgwsol.data.shards.etl import ShardConfig, dataset_listings, write_shard_set
    from bgwsol.data.sources.rejects import TooManyRejects
    from conftest import upload_tree

    root = tmp_path / "fruit"
    for i in range(10):
        photo(root / "apple" / f"a{i}.jpg")
        photo(root / "pear" / f"p{i}.jpg")
        if i < 4:
            voc(root / "apple" / f"a{i}.xml", f"a{i}.jpg", (60, 40), [("apple", (3, 3, 20, 20)), ("apple", (30, 5, 50, 30))])
            voc(root / "pear" / f"p{i}.xml", f"p{i}.jpg", (60, 40), [("pear", (5, 5, 30, 30))])
    (root / "pear" / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    src = f"s3://{bucket}/fruit"
    upload_tree(root, src)

    def without_paths(listing):
        return [{k: v for k, v in r.items() if k != "path"} for r in listing.rows]

    local, classes, _ = dataset_listings("folder", str(root), 0.5)
    remote, remote_classes, _ = dataset_listings("folder", src, 0.5)
    assert remote_classes == classes == ["apple", "pear"]
    assert [without_paths(x) for x in remote] == [without_paths(x) for x in local]
    assert any(len(json.loads(r["boxes"])) == 2 for x in remote for r in x.rows)  # both apples of an image are kept

    cfg = ShardConfig(max_short_side=32, samples_per_shard=5, max_reject_share=0.01)
    with pytest.raises(TooManyRejects, match=r"rejects.jsonl.*1 of 21 samples rejected.*cannot decode"):
        write_shard_set(remote, f"s3://{bucket}/strict", dataset="folder", classes=classes, cfg=cfg)
    from bgwsol.data.storage import Location

    assert not Location.parse(f"s3://{bucket}/strict/manifest.json").exists()
    cfg = ShardConfig(max_short_side=32, samples_per_shard=5, max_reject_share=0.1)
    from_bucket = write_shard_set(remote, f"s3://{bucket}/shards", dataset="folder", classes=classes, cfg=cfg)
    from_folder = write_shard_set(local, str(tmp_path / "shards"), dataset="folder", classes=classes, cfg=cfg)
    for split in ("train", "val", "test"):
        assert ([(s["name"], s["count"], s["sha256"]) for s in from_bucket.shards(split)]
                == [(s["name"], s["count"], s["sha256"]) for s in from_folder.shards(split)])
    assert from_bucket.manifest["rejects"]["count"] == 1
    rejected = [json.loads(line) for line in Location.parse(f"s3://{bucket}/shards/rejects.jsonl").read_bytes()
                .decode().splitlines()]
    assert [r["path"] for r in rejected] == [f"{src}/pear/broken.jpg"]



def fully_annotated(root, per_class: int, coco: bool):
    """Every photo of two classes boxed, as an annotation tool's whole export (VOC beside each
    image, or one COCO file)."""
    images, annotations = [], []
    for c in ("apple", "pear"):
        for i in range(per_class):
            photo(root / c / f"{c}{i:03d}.jpg")
            if coco:
                images.append({"id": len(images) + 1, "file_name": f"{c}/{c}{i:03d}.jpg", "width": 60, "height": 40})
                annotations.append({"id": len(images), "image_id": len(images), "category_id": 1 + (c == "pear"),
                                    "bbox": [2, 2, 20, 20]})
            else:
                voc(root / c / f"{c}{i:03d}.xml", f"{c}{i:03d}.jpg", (60, 40), [(c, (2, 2, 20, 20))])
    if coco:
        (root / "annotations.json").write_text(json.dumps({
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}]}))


@pytest.mark.parametrize("coco", [False, True], ids=["voc", "coco"])
def test_a_fully_annotated_folder_trains_on_most_of_its_photos(tmp_path, coco):
    root = tmp_path / "all_boxed"
    fully_annotated(root, 60, coco)
    train, val, test, classes, counts = read_folder(root, val_fraction=0.5)
    ids = [[s.image_id for s in split] for split in (train, val, test)]
    assert len(train) == 2 * 36 and counts.boxed_train == 72  # floor(0.6 x 60) per class
    assert len(val) + len(test) == 48 and counts.boxed_images == 120
    assert sum(map(len, ids)) == len(set(sum(ids, []))) == 120  # no photo in two splits
    assert val and test and {s.label for s in train} == {0, 1}
    rerun = read_folder(root, val_fraction=0.5)
    assert [[s.image_id for s in split] for split in rerun[:3]] == ids  # a rerun agrees
    few = read_folder(root, val_fraction=0.5, eval_min_per_class=25)
    for label in (0, 1):  # at least the minimum per evaluation split is left per class: 60 - 2 x 25 train
        assert sum(s.label == label for s in few[0]) == 10 and sum(s.label == label for s in few[1] + few[2]) == 50
    none = read_folder(root, val_fraction=0.5, boxed_train_share=0.0)
    assert none[0] == [] and len(none[1]) + len(none[2]) == 120  # the old rule, on request


def test_a_class_mostly_without_boxes_keeps_every_boxed_photo_for_evaluation(tmp_path):
    root = tmp_path / "some_boxed"
    fully_annotated(root, 30, coco=False)
    for i in range(31):  # apple: 31 unboxed photos beside its 30 boxed ones
        photo(root / "apple" / f"extra{i}.jpg")
    train, val, test, _, counts = read_folder(root, val_fraction=0.5)
    assert sum(s.label == 0 for s in val + test) == 30 and sum(s.label == 1 for s in val + test) == 20
    assert counts.boxed_train == 10 and len(train) == 31 + 10
