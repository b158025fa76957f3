"""Ground-truth masks for PxAP from CUB-200-2011's own layout (``segmentations/``, soft 0-255
masks): they reach the shards cut at 128, the evaluation reads one per image, and what cannot be
used is said (a mask of another size is rejected naming the file; a folder that matches no
image is one log line; a split with masks for some images only is counted)."""

import logging
import shutil

import numpy as np
import torch
import pytest
from PIL import Image

from bgwsol.data.shards.etl import ShardConfig, dataset_listings, write_shard_set
from bgwsol.data.shards.imageproc import object_pixels

CFG = ShardConfig(max_short_side=48, samples_per_shard=7, val_fraction=0.3, max_reject_share=0.2)


def test_what_counts_as_the_object():
    soft = Image.fromarray(np.array([[0, 51, 102], [153, 204, 255]], np.uint8))  # 0..5 of CUB's 5 annotators
    assert object_pixels(soft).tolist() == [[False, False, False], [True, True, True]]
    binary = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8))  # a 0/1 map: nonzero
    assert object_pixels(binary).tolist() == [[False, True], [True, False]]
    one_bit = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")  # PIL mode "1"
    assert object_pixels(one_bit).tolist() == [[False, True], [True, False]]


def official_layout(cub, root):
    """The synthetic CUB tree with ``segmentations/`` instead of ``masks/``, as soft masks: the
    object at 153 (3 of 5 annotators) and a one-pixel ring around it at 51 (a minority)."""
    shutil.copytree(cub, root, ignore=shutil.ignore_patterns("masks"))
    for path in (cub / "masks").rglob("*.png"):
        obj = np.asarray(Image.open(path)) > 127
        ring = np.zeros_like(obj)
        ring[1:, :] |= obj[:-1, :]
        ring[:, 1:] |= obj[:, :-1]
        soft = np.where(obj, 153, np.where(ring, 51, 0)).astype(np.uint8)
        target = root / "segmentations" / path.relative_to(cub / "masks")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(soft).save(target)


@pytest.mark.ray
def test_official_segmentations_reach_the_shards_and_give_pxap(tiny_synthetic, ray_local, tmp_path):
    from torch.utils.data import DataLoader

    from bgwsol.data.loader import EvalStream, collate_eval
    from bgwsol.evaluation.metrics import PxAPAccumulator, cam_thresholds

    paths, _ = tiny_synthetic
    root = tmp_path / "CUB_200_2011"
    official_layout(paths.cub, root)
    victim = sorted((root / "segmentations").rglob("*.png"))[0]
    Image.new("L", (5, 5)).save(victim)  # a mask of another size than its image
    listings, classes, names = dataset_listings("cub", str(root), CFG.val_fraction)
    assert all(r["mask_path"].startswith(str(root / "segmentations")) for x in listings for r in x.rows)
    shards = write_shard_set(listings, str(tmp_path / "shards"), dataset="cub", classes=classes, cfg=CFG)
    rejects = (tmp_path / "shards/rejects.jsonl").read_text()
    assert "mask is 5x5 but the image is" in rejects and str(victim) in rejects
    for split in ("train", "val", "test"):  # every kept sample has its mask, and the manifest says so
        assert shards.manifest["splits"][split]["masks"] == shards.count(split) > 0
    test_urls = [shards.location.join(s["name"]).url for s in shards.shards("test")]
    pxap = PxAPAccumulator(cam_thresholds(0.01))
    seen = 0
    for batch in DataLoader(EvalStream(test_urls, input_size=32), batch_size=4, collate_fn=collate_eval):
        for mask in batch["mask"]:
            truth = mask.numpy() > 127
            assert set(np.unique(mask.numpy())) <= {0, 255} and truth.any()
            pxap.accumulate(truth.astype(np.float32), truth)  # the truth as the score map: a perfect PxAP
            seen += 1
    assert seen == shards.count("test") and pxap.compute() == pytest.approx(100.0)

    # and through the evaluator, as every run is scored: the shards' masks give PxAP and mask mIoU
    from bgwsol.config import EvalConfig
    from bgwsol.evaluation.evaluator import evaluate

    class Brightness(torch.nn.Module):  # a stand-in model: its map is the image's own brightness
        def forward(self, images):
            return {"logits": images.mean(dim=(2, 3)), "maps": images.mean(dim=1)}

    class Own:
        def scoremaps(self, outputs, labels):
            return outputs["maps"]

    loader = DataLoader(EvalStream(test_urls, input_size=32), batch_size=4, collate_fn=collate_eval)
    found = evaluate(Brightness(), {"brightness": Own()}, loader, EvalConfig(cam_curve_interval=0.05, scoremap_size=32),
                     preprocess=lambda images: images.float() / 255)["brightness"]
    summary = found.summary()
    assert found.pxap is not None and found.boxes.count == shards.count("test")
    assert 0 < summary["pxap"] < 100 and 0 < summary["mask_miou"] < 100


@pytest.mark.ray
def test_masks_that_match_nothing_or_only_some_images_are_said(tiny_synthetic, ray_local, tmp_path, caplog):
    paths, _ = tiny_synthetic
    root = tmp_path / "CUB_200_2011"
    official_layout(paths.cub, root)
    stray = root / "stray"
    (root / "segmentations").rename(stray)
    (root / "segmentations" / "other").mkdir(parents=True)
    for i, path in enumerate(sorted(stray.rglob("*.png"))):
        shutil.copy(path, root / "segmentations/other" / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="bgwsol"):
        dataset_listings("cub", str(root), CFG.val_fraction)
    said = [r.getMessage() for r in caplog.records if "match no image" in r.getMessage()]
    assert len(said) == 1 and "segmentations" in said[0] and "no PxAP" in said[0]

    shutil.rmtree(root / "segmentations")
    some = sorted(stray.rglob("*.png"))[::2]  # masks for every second image only
    for path in some:
        target = root / "segmentations" / path.relative_to(stray)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    caplog.clear()
    listings, classes, _ = dataset_listings("cub", str(root), CFG.val_fraction)
    with caplog.at_level(logging.WARNING, logger="bgwsol"):
        shards = write_shard_set(listings, str(tmp_path / "some"), dataset="cub", classes=classes, cfg=CFG)
    counted = {split: shards.manifest["splits"][split].get("masks", 0) for split in shards.splits}
    assert sum(counted.values()) == len(some)
    partial = [split for split in shards.splits if 0 < counted[split] < shards.count(split)]
    assert partial and all(any(f"{split}: {counted[split]} of {shards.count(split)} samples have a ground-truth mask"
                               in r.getMessage() for r in caplog.records) for split in partial)


@pytest.mark.ray
def test_the_summary_counts_masks(tiny_synthetic, ray_local, tmp_path):
    from bgwsol.data.shards.jobs import summary

    paths, _ = tiny_synthetic
    listings, classes, _ = dataset_listings("cub", str(paths.cub), CFG.val_fraction)
    shards = write_shard_set(listings, str(tmp_path / "s"), dataset="cub", classes=classes, cfg=CFG)
    assert f"{shards.count('test')} with masks" in summary(shards)


def test_mask_miou_per_threshold_and_its_choice_on_validation():
    from bgwsol.evaluation.metrics import PxAPAccumulator, cam_thresholds

    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True  # 16 pixels
    soft = np.where(truth, 0.8, 0.0).astype(np.float32)
    soft[6, 2:6] = 0.5  # 4 pixels below the object, at 0.5
    acc = PxAPAccumulator(cam_thresholds(0.1))
    acc.accumulate(soft, truth)
    miou = dict(zip(np.round(acc.thresholds, 1), acc.mask_miou()))
    assert miou[0.5] == pytest.approx(100 * 16 / 20) and miou[0.6] == pytest.approx(100.0)
    assert miou[0.9] == pytest.approx(100 * 0 / 16)
    assert 0.5 < acc.best_mask_threshold() <= 0.8
    other = PxAPAccumulator(cam_thresholds(0.1))
    other.accumulate(np.zeros((10, 10), np.float32), np.zeros((10, 10), bool))  # nothing, nothing predicted: 1
    merged = acc.merge(other)
    assert merged.images == 2 and merged.mask_miou_at(0.6) == pytest.approx(100.0)
    assert merged.mask_miou_at(0.9) == pytest.approx(50.0)


def test_localize_writes_masks_at_the_threshold_chosen_on_validation(tmp_path, capsys):
    from bgwsol.checkpoint import load_checkpoint, save_checkpoint
    from bgwsol.serving.cli import main as cli_main
    from bgwsol.serving.localizer import Localizer
    from test_bad_inputs import tiny_checkpoint

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(photo)
    state = load_checkpoint(tiny_checkpoint(tmp_path / "plain"))
    with_mask = save_checkpoint({**state, "mask_tau": 0.6}, tmp_path / "masked")
    assert cli_main(["localize", "--model", str(with_mask), "--out", str(tmp_path / "o"), "--masks",
                     str(tmp_path / "m"), str(photo)]) == 0
    out, err = capsys.readouterr()
    assert out.strip().split("\t")[-1] == str(tmp_path / "m" / "photo_mask.png")
    assert "mask threshold 0.60 (best mask mIoU on validation)" in err
    with Image.open(tmp_path / "m" / "photo_mask.png") as written, Image.open(photo) as image:
        mask = np.asarray(written)
        localizer = Localizer(load_checkpoint(with_mask))
        assert written.size == image.size and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, localizer(image.convert("RGB")).heatmap >= 0.6)
    assert cli_main(["localize", "--model", str(tmp_path / "plain"), "--masks", str(tmp_path / "m2"),
                     "--out", str(tmp_path / "o"), str(photo)]) == 0
    assert "mask threshold 0.30 (the box threshold: the model was scored without validation masks)" in \
        capsys.readouterr().err
