import re

import numpy as np
import pytest
from PIL import Image

from bgwsol.data.sources.background import read_background_folder
from bgwsol.data.sources.cub import read_cub
from bgwsol.data.sources.ilsvrc import read_ilsvrc
from bgwsol.data.sources.records import DatasetFormatError
from bgwsol.data.sources.splits import hold_out
from bgwsol.data.sources.wsol_metadata import read_wsol_metadata, write_wsol_metadata


def test_ilsvrc_counts_labels_and_boxes(tiny_synthetic):
    paths, cfg = tiny_synthetic
    train, wnids = read_ilsvrc(paths.ilsvrc, "train")
    test, _ = read_ilsvrc(paths.ilsvrc, "test")
    assert len(wnids) == cfg.num_classes
    assert len(train) == cfg.num_classes * cfg.train_per_class
    assert len(test) == cfg.num_classes * cfg.test_per_class
    # each train image sits in its class folder, and its boxes are those of the CSV row
    rows = {line.split(",")[0]: line.split(",")[1].split() for line in
            (paths.ilsvrc / "LOC_train_solution.csv").read_text().splitlines()[1:]}
    for s in train:
        assert s.image_id.split("/")[1] == wnids[s.label]
        tokens = rows[s.path.stem]
        assert s.boxes.tolist() == [[int(t) for t in tokens[i + 1:i + 5]] for i in range(0, len(tokens), 5)]
        assert s.mask_path is not None and s.mask_path.is_file()


def test_cub_boxes_are_x_y_w_h(tiny_synthetic):
    paths, cfg = tiny_synthetic
    train, classes = read_cub(paths.cub, "train")
    test, _ = read_cub(paths.cub, "test")
    assert len(classes) == cfg.num_classes
    assert len(train) == cfg.num_classes * cfg.cub_train_per_class and len(test) == cfg.num_classes * cfg.cub_test_per_class
    first = (paths.cub / "bounding_boxes.txt").read_text().splitlines()[0].split()
    x, y, w, h = (float(v) for v in first[1:])
    assert train[0].boxes.tolist() == [[int(x), int(y), int(x + w), int(y + h)]]


def test_splits_are_disjoint_and_deterministic(tiny_synthetic):
    from bgwsol.data.shards.etl import dataset_listings

    paths, _ = tiny_synthetic
    a = {x.name: [r["__key__"] for r in x.rows] for x in dataset_listings("ilsvrc", str(paths.ilsvrc), 0.3)[0]}
    b = {x.name: [r["__key__"] for r in x.rows] for x in dataset_listings("ilsvrc", str(paths.ilsvrc), 0.3)[0]}
    assert a == b and a["val"] and not set(a["val"]) & set(a["train"])


def test_metadata_round_trip(tiny_synthetic, tmp_path):
    import dataclasses

    from PIL import Image

    paths, _ = tiny_synthetic
    test = [dataclasses.replace(s, size=Image.open(s.path).size) for s in read_ilsvrc(paths.ilsvrc, "test")[0]]
    meta = read_wsol_metadata(write_wsol_metadata(test, tmp_path / "meta"))
    assert meta.image_ids == [s.image_id for s in test]
    for s in test:
        assert meta.boxes[s.image_id].tolist() == s.boxes.tolist()
        assert meta.sizes[s.image_id] == s.size and meta.labels[s.image_id] == s.label


@pytest.fixture()
def ilsvrc_copy(tiny_synthetic, tmp_path):
    import shutil

    paths, _ = tiny_synthetic
    dst = tmp_path / "ilsvrc"
    shutil.copytree(paths.ilsvrc, dst)
    return dst


def test_missing_solution_file(ilsvrc_copy):
    (ilsvrc_copy / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetFormatError, match="LOC_val_solution.csv: missing"):
        read_ilsvrc(ilsvrc_copy, "test")


def test_unknown_wnid_names_file_and_line(ilsvrc_copy):
    csv = ilsvrc_copy / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",n12345678 1 1 5 5"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"LOC_val_solution.csv:3: unknown wnid n12345678"):
        read_ilsvrc(ilsvrc_copy, "test")


def test_empty_row_names_file_and_line(ilsvrc_copy):
    csv = ilsvrc_copy / "LOC_train_solution.csv"
    lines = csv.read_text().splitlines()
    lines.insert(4, "")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"LOC_train_solution.csv:5: empty row"):
        read_ilsvrc(ilsvrc_copy, "train")


def test_box_outside_image_goes_to_the_rejects_with_its_image(ilsvrc_copy):
    csv = ilsvrc_copy / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    image_id, pred = lines[1].split(",")
    wnid = pred.split()[0]
    lines[1] = f"{image_id},{wnid} 0 0 5000 10"
    csv.write_text("\n".join(lines) + "\n")
    from bgwsol.data.images import RejectedImage
    from bgwsol.data.shards.imageproc import process_image

    test, _ = read_ilsvrc(ilsvrc_copy, "test")
    (victim,) = [s for s in test if s.image_id.endswith(image_id + ".JPEG")]
    with pytest.raises(RejectedImage, match=r"bad box: .*outside"):  # the ETL's reason in rejects.jsonl
        process_image(victim.path.read_bytes(), victim.boxes)


def test_missing_image_is_one_reject_naming_the_csv_line(ilsvrc_copy):
    victim = sorted((ilsvrc_copy / "Data/CLS-LOC/val").iterdir())[0]
    victim.unlink()
    test, _ = read_ilsvrc(ilsvrc_copy, "test")
    bad = [s for s in test if s.problem]
    assert len(bad) == 1 and re.search(rf"LOC_val_solution.csv:2: image {victim.stem} not found", bad[0].problem)


def test_non_numeric_csv_box_is_one_reject(ilsvrc_copy):
    csv = ilsvrc_copy / "LOC_train_solution.csv"
    lines = csv.read_text().splitlines()
    image_id, pred = lines[3].split(",")
    lines[3] = f"{image_id},{pred.split()[0]} 1 x 5 5"
    csv.write_text("\n".join(lines) + "\n")
    train, _ = read_ilsvrc(ilsvrc_copy, "train")
    bad = [s for s in train if s.problem]
    assert [s.path.stem for s in bad] == [image_id]
    assert "LOC_train_solution.csv:4: non-numeric box coordinate" in bad[0].problem


def test_class_folder_not_in_mapping(ilsvrc_copy):
    stray = ilsvrc_copy / "Data/CLS-LOC/train/n99999999"
    stray.mkdir()
    next((ilsvrc_copy / "Data/CLS-LOC/train").glob("*/*.JPEG")).rename(stray / "x.JPEG")
    with pytest.raises(DatasetFormatError, match="n99999999 is not in LOC_synset_mapping.txt"):
        read_ilsvrc(ilsvrc_copy, "train")


def test_cub_missing_box_row(tiny_synthetic, tmp_path):
    import shutil

    paths, _ = tiny_synthetic
    dst = tmp_path / "cub"
    shutil.copytree(paths.cub, dst)
    lines = (dst / "bounding_boxes.txt").read_text().splitlines()
    (dst / "bounding_boxes.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetFormatError, match="bounding_boxes.txt: no row for image 1"):
        read_cub(dst, "train")


def _one_image_metadata(folder, box: str):
    """A wsolevaluation metadata folder of one 10x10 image ``a`` with ``box`` (``"x0,y0,x1,y1"``)."""
    folder.mkdir()
    (folder / "image_ids.txt").write_text("a\n")
    (folder / "class_labels.txt").write_text("a,0\n")
    (folder / "image_sizes.txt").write_text("a,10,10\n")
    (folder / "localization.txt").write_text(f"a,{box}\n")
    return folder


def test_metadata_box_reaching_the_edge_is_clipped(tmp_path):
    meta = _one_image_metadata(tmp_path / "m", "2,0,10,5")  # x1 = width: reaches the edge
    assert read_wsol_metadata(meta).boxes["a"].tolist() == [[2, 0, 9, 5]]


def test_metadata_with_box_outside(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"localization.txt:1.*outside"):
        read_wsol_metadata(_one_image_metadata(tmp_path / "m", "0,0,20,5"))


def test_background_folder_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="not found"):
        read_background_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="no images"):
        read_background_folder(tmp_path / "empty")


def test_hold_out_only_takes_boxed_images(tiny_synthetic):
    paths, _ = tiny_synthetic
    train, _ = read_ilsvrc(paths.ilsvrc, "train")
    rest, val = hold_out(train, 0.5)
    assert len(rest) + len(val) == len(train) and all(len(s.boxes) for s in val)


def test_synthetic_is_deterministic_and_masks_match_boxes(tiny_synthetic, tmp_path):
    from bgwsol.data.sources.synthetic import generate

    paths, cfg = tiny_synthetic
    again = generate(tmp_path / "again", cfg, show_progress=False)
    a = sorted((paths.ilsvrc / "Data/CLS-LOC/val").iterdir())[0]
    assert a.read_bytes() == (again.ilsvrc / "Data/CLS-LOC/val" / a.name).read_bytes()
    test, _ = read_ilsvrc(paths.ilsvrc, "test")
    two = 0
    for s in test:
        mask = np.asarray(Image.open(s.mask_path)) > 0
        ys, xs = np.nonzero(mask)
        union = [s.boxes[:, 0].min(), s.boxes[:, 1].min(), s.boxes[:, 2].max(), s.boxes[:, 3].max()]
        assert [xs.min(), ys.min(), xs.max(), ys.max()] == union
        two += len(s.boxes) == 2
    train, _ = read_ilsvrc(paths.ilsvrc, "train")
    assert two + sum(len(s.boxes) == 2 for s in train) > 0  # some images hold two objects
