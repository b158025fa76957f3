"""Streaming loader over shards: equal batches per rank, exactly-once evaluation, boxes follow pixels."""

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bgwsol.data.shards.etl import write_tar
from bgwsol.data.loader import CropFlip, EvalStream, TrainStream, collate_eval, normalize
from bgwsol.data.storage import Location


def _sample(key: str, label: int, size=(40, 30), box=(8, 6, 27, 21)) -> dict:
    """A dark image with a bright rectangle exactly on its box."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1 + 1, x0:x1 + 1] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    meta = {"label": label, "boxes": [list(box)] if label >= 0 else [], "size": list(size)}
    return {"__key__": key, "jpg": buf.getvalue(), "json": json.dumps(meta)}


def write_shards(root, prefix: str, sizes: list[int], label_of=lambda i: i % 3, corrupt: set[int] = frozenset()):
    urls, k = [], 0
    for s, n in enumerate(sizes):
        rows = []
        for _ in range(n):
            row = _sample(f"{prefix}{k:05d}", label_of(k))
            if k in corrupt:
                row["jpg"] = b"\xff\xd8 broken jpeg"
            rows.append(row)
            k += 1
        path = root / f"{prefix}-{s:06d}.tar"
        with open(path, "wb") as f:
            write_tar(rows, f)
        urls.append(str(path))
    return urls


def test_every_rank_gets_the_same_number_of_batches_from_uneven_shards(tmp_path):
    objects = write_shards(tmp_path, "obj", [3, 40, 1, 17])  # very uneven
    background = write_shards(tmp_path, "bg", [5, 2], label_of=lambda i: -1)
    steps = TrainStream.steps_for(61, world_size=2, batch_size=8, bg_ratio=0.25, has_background=True)
    assert steps == 61 // (2 * 6)
    counts = []
    for rank in range(2):
        for workers in (0, 2, 3):
            stream = TrainStream(objects, background, batch_size=8, bg_ratio=0.25, steps_per_epoch=steps,
                                 input_size=24, rank=rank, world_size=2, shuffle_buffer=16, seed=1)
            batches = list(DataLoader(stream, batch_size=None, num_workers=workers))
            counts.append(len(batches))
            for b in batches:
                assert b["image"].shape == (8, 3, 24, 24) and b["image"].dtype == torch.uint8
                assert b["is_background"].tolist() == [False] * 6 + [True] * 2
                assert (b["label"][:6] >= 0).all() and (b["label"][6:] == -1).all()
    assert counts == [steps] * 6


def test_ranks_and_epochs_draw_different_streams(tmp_path):
    objects = write_shards(tmp_path, "obj", [10, 10, 10])
    keys = {}
    for rank, epoch in ((0, 0), (1, 0), (0, 1)):
        stream = TrainStream(objects, None, batch_size=4, bg_ratio=0.0, steps_per_epoch=5, input_size=16,
                             rank=rank, world_size=2, shuffle_buffer=8, seed=0)
        stream.set_epoch(epoch)
        keys[(rank, epoch)] = [b["label"].tolist() for b in DataLoader(stream, batch_size=None)]
    assert keys[(0, 0)] != keys[(1, 0)] and keys[(0, 0)] != keys[(0, 1)]
    again = TrainStream(objects, None, batch_size=4, bg_ratio=0.0, steps_per_epoch=5, input_size=16, rank=0,
                        world_size=2, shuffle_buffer=8, seed=0)
    assert [b["label"].tolist() for b in DataLoader(again, batch_size=None)] == keys[(0, 0)]  # seeded


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_visits_every_sample_exactly_once_across_ranks(tmp_path, workers):
    urls = write_shards(tmp_path, "val", [7, 1, 12, 4, 9])
    seen = []
    for rank in range(2):
        loader = DataLoader(EvalStream(urls, input_size=20, rank=rank, world_size=2), batch_size=4,
                            collate_fn=collate_eval, num_workers=workers)
        for b in loader:
            seen += b["key"]
            assert b["image"].shape[1:] == (3, 20, 20)
            assert all(s == (40, 30) for s in b["size"])
    assert sorted(seen) == [f"val{k:05d}" for k in range(33)]


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_cut_by_sample_keeps_four_ranks_busy_on_three_shards(tmp_path, workers):
    """Cut by shard, a 4th rank would get nothing from 3 shards; cut by sample (the manifest's
    counts), each image is scored once and the ranks' shares differ by at most one sample per
    reader (one DataLoader worker)."""
    sizes = [13, 2, 18]
    urls = write_shards(tmp_path, "val", sizes)
    seen, per_rank = [], []
    for rank in range(4):
        loader = DataLoader(EvalStream(urls, input_size=16, rank=rank, world_size=4, counts=sizes), batch_size=4,
                            collate_fn=collate_eval, num_workers=workers)
        keys = [k for b in loader for k in b["key"]]
        seen += keys
        per_rank.append(len(keys))
    assert sorted(seen) == [f"val{k:05d}" for k in range(sum(sizes))]
    assert min(per_rank) > 0 and max(per_rank) - min(per_rank) <= max(1, workers), per_rank


def test_evaluation_cut_by_sample_reads_a_corrupt_sample_nowhere_twice(tmp_path):
    """(Scoring counts what it could not score as the manifest's count minus what it scored.)"""
    urls = write_shards(tmp_path, "val", [6, 6], corrupt={2, 7, 8})
    seen = []
    for rank in range(3):
        for b in DataLoader(EvalStream(urls, input_size=16, rank=rank, world_size=3, counts=[6, 6]), batch_size=2,
                            collate_fn=collate_eval):
            seen += b["key"]
    assert sorted(seen) == [f"val{k:05d}" for k in range(12) if k not in (2, 7, 8)]


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    urls = write_shards(tmp_path, "val", [6, 6], corrupt={2, 7, 8})
    seen, skipped = [], 0
    for b in DataLoader(EvalStream(urls, input_size=16), batch_size=3, collate_fn=collate_eval):
        seen += b["key"]
        skipped += b["skipped"]
    assert len(seen) == 9 and skipped == 3
    train = TrainStream(urls, None, batch_size=4, bg_ratio=0, steps_per_epoch=6, input_size=16, shuffle_buffer=0)
    batches = list(DataLoader(train, batch_size=None))
    assert len(batches) == 6 and sum(b["skipped"] for b in batches) >= 3  # resampling meets each bad one


def test_augmentation_moves_boxes_with_the_pixels():
    s = _sample("k", 0, size=(64, 48), box=(10, 8, 41, 33))
    image = Image.open(io.BytesIO(s["jpg"])).convert("RGB")
    crop_flip = CropFlip(32, rng=random.Random(0))
    inside_means, outside_means, flipped = [], [], 0
    crop_flip_no_flip = CropFlip(32, flip_p=0.0, rng=random.Random(0))
    for _ in range(30):
        out, boxes = crop_flip(image, np.array([[10, 8, 41, 33]]))
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        flipped += not np.array_equal(out, crop_flip_no_flip(image, np.zeros((0, 4)))[0])
        gray = torch.from_numpy(out.copy()).float().mean(2)
        if not len(boxes):
            continue
        x0, y0, x1, y1 = boxes[0].tolist()
        inside = gray[y0:y1 + 1, x0:x1 + 1]
        mask = torch.ones_like(gray, dtype=torch.bool)
        mask[y0:y1 + 1, x0:x1 + 1] = False
        inside_means.append(float(inside.mean()))
        if mask.any():
            outside_means.append(float(gray[mask].mean()))
    assert len(inside_means) > 20 and 5 < flipped < 25
    assert min(inside_means) > 170 and max(outside_means) < 90


def test_crop_window_follows_the_random_resized_crop_rule():
    """Windows lie inside the image with area fraction in ``scale`` and aspect in 3/4..4/3 (up to
    rounding), the same seed gives the same windows, and an image too thin for any window gets
    the largest central one."""
    a, b = CropFlip(32, scale=(0.4, 1.0), rng=random.Random(7)), CropFlip(32, scale=(0.4, 1.0), rng=random.Random(7))
    windows = [a.window(341, 256) for _ in range(500)]
    assert windows == [b.window(341, 256) for _ in range(500)]
    for left, top, w, h in windows:
        assert 0 <= left and left + w <= 341 and 0 <= top and top + h <= 256
        assert 0.4 - 0.01 <= w * h / (341 * 256) <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    fractions = sorted(w * h / (341 * 256) for _, _, w, h in windows)
    assert fractions[len(fractions) // 2] < 0.75  # not stuck on the fallback (the whole image)
    assert a.window(400, 20) == ((400 - 27) // 2, 0, 27, 20)
    assert a.window(20, 400) == (0, (400 - 27) // 2, 20, 27)


def test_normalize_matches_torchvision():
    from torchvision.transforms import v2

    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    ref = v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x.float() / 255)
    assert torch.allclose(normalize(x), ref, atol=1e-5)


@pytest.mark.s3
def test_train_stream_reads_s3_shards(tmp_path, bucket):
    local = write_shards(tmp_path, "obj", [5, 5])
    urls = []
    for p in local:
        loc = Location.parse(f"s3://{bucket}/shards/{p.rsplit('/', 1)[1]}")
        loc.write_bytes(open(p, "rb").read())
        urls.append(loc.url)
    stream = TrainStream(urls, None, batch_size=4, bg_ratio=0, steps_per_epoch=3, input_size=16)
    assert len(list(DataLoader(stream, batch_size=None, num_workers=2))) == 3


def test_batches_mix_classes_from_the_first_step_of_a_class_sorted_shard(tmp_path):
    """Shards store members in key order, which is class order for ILSVRC and CUB: the shuffle
    buffer must be full before the first batch, or early batches hold one or two classes."""
    per_class, classes = 60, 4
    urls = write_shards(tmp_path, "sorted", [per_class * classes], label_of=lambda i: i // per_class)
    stream = TrainStream(urls, None, batch_size=16, bg_ratio=0.0, steps_per_epoch=4, input_size=16, seed=0)
    batches = list(DataLoader(stream, batch_size=None))
    for b in batches:
        assert len(set(b["label"].tolist())) >= 3, b["label"].tolist()
    seen = torch.cat([b["label"] for b in batches])
    assert torch.bincount(seen, minlength=classes).min() >= 8  # every class, near its share of 16 of 64
