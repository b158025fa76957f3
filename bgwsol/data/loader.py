"""Streaming loaders over a shard set, one per training worker (rank).

- :class:`TrainStream`: resampled shards (every rank draws shards at random, seeded by
  rank, DataLoader worker and epoch), a shuffle buffer, decode, augmentation that moves the
  boxes with the pixels, and background samples mixed into each batch at a fixed count.
  Every rank yields exactly ``steps_per_epoch`` batches, whatever the shard sizes, so DDP
  never waits at the end of an epoch for a rank that ran out.
- :class:`EvalStream`: no resampling; every sample is visited exactly once overall. Given the
  shards' sample counts (from the manifest), the split is cut by sample: each of the
  ``ranks x DataLoader workers`` readers takes one contiguous slice of the split, and slices
  differ by at most one sample, however few shards there are (ILSVRC's validation is ~8
  shards; cut by shard, 24 of 32 GPUs would wait). A reader reads its slice's shards and skips,
  undecoded, the members before its slice in the first one.

Corrupt samples (a member that does not decode, a broken tar) are skipped and counted: each
batch carries ``"skipped"``, the number its worker dropped since its previous batch.
Images come out as uint8 ``(B, 3, S, S)`` in channels_last memory (NHWC, what GPUs train
fastest on); normalize on the device (:func:`normalize`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from bgwsol.data.images import IMAGENET_MEAN, IMAGENET_STD, decode_rgb
from bgwsol.data.storage import register_webdataset_opener

log = logging.getLogger(__name__)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float, ImageNet-normalized (run it on the training device)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


@dataclass
class DecodedSample:
    """One shard sample: RGB image, label (-1 background), inclusive ``(N, 4)`` boxes in its pixels."""

    key: str
    image: Image.Image
    label: int
    boxes: np.ndarray
    mask: Image.Image | None


def decode_sample(raw: dict) -> DecodedSample:
    """webdataset's raw dict (``__key__``, ``jpg``, ``json``, optional ``mask.png`` bytes) -> DecodedSample."""
    meta = json.loads(raw["json"])
    image, _ = decode_rgb(raw["jpg"])  # raises RejectedImage, which the streams skip and count
    mask = None
    if raw.get("mask.png") is not None:
        mask = Image.open(io.BytesIO(raw["mask.png"]))
        mask.load()
    return DecodedSample(raw["__key__"], image, int(meta["label"]),
                         np.asarray(meta["boxes"], np.int64).reshape(-1, 4), mask)


def _rank_worker(rank: int, world_size: int) -> tuple[int, int, int, int]:
    info = get_worker_info()
    return rank, world_size, (info.id if info else 0), (info.num_workers if info else 1)


class _SkipLog:
    """wds handler: counts (and logs the first few) broken tars instead of raising."""

    def __init__(self):
        self.count = 0

    def __call__(self, exc: Exception) -> bool:
        self.count += 1
        if self.count <= 5:
            log.warning("skipping a corrupt shard member: %s", exc)
        return True


def _raw_samples(urls: list[str], *, resampled: bool, seed: int, shuffle_buffer: int, handler: _SkipLog,
                 rank: int, world_size: int, worker: int, num_workers: int, epoch: int) -> Iterator[dict]:
    import webdataset as wds

    register_webdataset_opener()
    if resampled:
        base = seed * 1_000_003 + epoch * 10_007 + rank * 1000 + worker
        shards = wds.ResampledShards(urls, seed=base, worker_seed=lambda: 0, deterministic=True)
    else:
        mine = urls[rank::world_size][worker::num_workers]
        shards = [{"url": u} for u in mine]
    stream = wds.tarfile_to_samples(handler=handler)(shards)
    if shuffle_buffer > 1:
        # the ETL stores each shard's members in a random order with every class spread over the
        # split (bgwsol.data.shards.etl.shard_order), so a shard read front to back is already
        # mixed, and the buffer only shuffles further (WebDataset's advice: shuffle at write and at
        # read). It is filled before the first sample leaves it; shard sets made before that
        # stored members in class order, and a partly filled buffer then gave one-class batches
        stream = wds.shuffle(bufsize=shuffle_buffer, initial=shuffle_buffer,
                             rng=random.Random(seed * 7919 + epoch * 31 + rank * 1000 + worker))(stream)
    return stream


class CropFlip:
    """Random resized crop to ``size`` x ``size`` plus a horizontal flip, on a PIL image and its boxes.

    The crop window follows torchvision's ``RandomResizedCrop`` rule (area fraction uniform
    in ``scale``, log-uniform aspect ratio in ``3/4..4/3``, ten tries, then the largest
    central window within those ratios), drawn from ``rng``, a ``random.Random`` seeded per
    rank, worker and epoch, so a run's augmentation is reproducible. The window is resampled
    by PIL's ``resize(box=...)`` in one pass and boxes are moved in plain Python floats. Drawing the window
    with torchvision's own ``get_params`` (a dozen one-element tensor ops) and moving boxes
    with NumPy cost about 0.3 ms per image, a quarter of the whole decode-and-crop budget
    (benchmarks/bench_loader.py); this class does the same work in a few microseconds.
    """

    RATIO = (3 / 4, 4 / 3)

    def __init__(self, size: int, scale: tuple[float, float] = (0.4, 1.0), flip_p: float = 0.5,
                 rng: random.Random | None = None):
        self.size, self.scale, self.flip_p = size, scale, flip_p
        self.rng = rng or random.Random()
        self._log_ratio = (math.log(self.RATIO[0]), math.log(self.RATIO[1]))

    def window(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A crop window ``(left, top, w, h)`` in pixels of a ``width`` x ``height`` image."""
        rng, area = self.rng, width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self._log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        lo, hi = self.RATIO
        if width / height < lo:
            w, h = width, round(width / lo)
        elif width / height > hi:
            w, h = round(height * hi), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, image: Image.Image, boxes: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """Returns the crop as uint8 ``(size, size, 3)`` and the boxes that survive as inclusive
        int64 ``(M, 4)`` in the crop's pixels."""
        left, top, w, h = self.window(*image.size)
        out = image.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        flip = self.rng.random() < self.flip_p
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        size, sx, sy = self.size, self.size / w, self.size / h
        kept = []
        # pixel [x0, x1] covers [x0, x1 + 1) in continuous coordinates
        for bx0, by0, bx1, by1 in np.asarray(boxes).reshape(-1, 4).tolist():
            x0, x1 = min(max((bx0 - left) * sx, 0), size), min(max((bx1 + 1 - left) * sx, 0), size)
            y0, y1 = min(max((by0 - top) * sy, 0), size), min(max((by1 + 1 - top) * sy, 0), size)
            if flip:
                x0, x1 = size - x1, size - x0
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                kept.append((math.floor(x0), math.floor(y0), math.ceil(x1) - 1, math.ceil(y1) - 1))
        return np.asarray(out), torch.from_numpy(np.array(kept, np.int64).reshape(-1, 4))


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 ``(3, H, W)`` tensor."""
    return torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1)


class TrainStream(IterableDataset):
    """Training batches for one rank: ``{"image": uint8 (B,3,S,S), "label": (B,), "boxes": [ (Mi,4) ],
    "is_background": (B,) bool, "skipped": int}``.

    Each batch holds ``batch_size - n_bg`` object samples and ``n_bg = round(batch_size *
    bg_ratio)`` background samples (0 without a background set). Use it with
    ``DataLoader(stream, batch_size=None, num_workers=k)``; call :meth:`set_epoch` before
    each epoch (with workers, the DataLoader must be re-iterated, which it is per epoch).

    ``shuffle_buffer`` (1,000 samples): the shards are mixed when written (every class spread
    over the split, members in random order), so any run of a shard holds the classes in their
    proportions and the buffer need not span many classes by itself; it decorrelates the
    samples of one shard further and mixes consecutive shards. (For scale: 256 independent draws
    from ILSVRC's 1,000 balanced classes hit about 226 distinct classes; a 1,000-deep buffer over
    class-ordered members, ~10 per class, could hold only ~100.)
    """

    def __init__(self, object_urls: list[str], background_urls: list[str] | None, *, batch_size: int,
                 bg_ratio: float, steps_per_epoch: int, input_size: int, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, seed: int = 0):
        super().__init__()
        if not object_urls:
            raise ValueError("no object shards")
        self.object_urls, self.background_urls = list(object_urls), list(background_urls or [])
        self.n_bg = int(round(batch_size * bg_ratio)) if self.background_urls else 0
        self.n_obj = batch_size - self.n_bg
        if self.n_obj <= 0:
            raise ValueError(f"bg_ratio {bg_ratio} leaves no object sample in a batch of {batch_size}")
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.steps_per_epoch, self.input_size = steps_per_epoch, input_size
        self.rank, self.world_size, self.shuffle_buffer, self.seed = rank, world_size, shuffle_buffer, seed
        self.epoch = 0

    @staticmethod
    def steps_for(num_samples: int, world_size: int, batch_size: int, bg_ratio: float, has_background: bool) -> int:
        """Batches per rank per epoch so that the ranks together see about one pass over the objects."""
        n_obj = batch_size - (int(round(batch_size * bg_ratio)) if has_background else 0)
        return max(1, num_samples // (world_size * n_obj))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, nworkers = _rank_worker(self.rank, self.world_size)
        my_steps = self.steps_per_epoch // nworkers + (worker < self.steps_per_epoch % nworkers)
        common = dict(resampled=True, shuffle_buffer=self.shuffle_buffer, rank=rank, world_size=world,
                      worker=worker, num_workers=nworkers, epoch=self.epoch)
        handler = _SkipLog()
        objects = _raw_samples(self.object_urls, seed=self.seed, handler=handler, **common)
        backgrounds = (_raw_samples(self.background_urls, seed=self.seed + 1, handler=handler, **common)
                       if self.n_bg else iter(()))
        crop_flip = CropFlip(self.input_size, rng=random.Random(f"augment/{self.seed}/{self.epoch}/{rank}/{worker}"))
        skipped_reported = 0
        bad = 0
        for _ in range(my_steps):
            # (B, H, W, 3) storage viewed as (B, 3, H, W): a channels_last tensor, filled by plain copies
            nhwc = torch.empty((self.n_obj + self.n_bg, self.input_size, self.input_size, 3), dtype=torch.uint8)
            slots = nhwc.numpy()
            labels, boxes, is_bg = [], [], []
            for stream, n, bg in ((objects, self.n_obj, False), (backgrounds, self.n_bg, True)):
                got = 0
                while got < n:
                    raw = next(stream)
                    try:
                        s = decode_sample(raw)
                    except Exception as exc:  # noqa: BLE001 - any undecodable member is skipped and counted
                        bad += 1
                        if bad <= 5:
                            log.warning("skipping corrupt sample %s: %s", raw.get("__key__"), exc)
                        continue
                    pixels, b = crop_flip(s.image, s.boxes)
                    slots[len(labels)] = pixels
                    labels.append(-1 if bg else s.label)
                    boxes.append(b)
                    is_bg.append(bg)
                    got += 1
            total_skipped = bad + handler.count
            yield {"image": nhwc.permute(0, 3, 1, 2), "label": torch.tensor(labels, dtype=torch.int64), "boxes": boxes,
                   "is_background": torch.tensor(is_bg), "skipped": total_skipped - skipped_reported}
            skipped_reported = total_skipped


def collate_eval(samples: list[dict]) -> dict:
    """Batch EvalStream samples: stack images and labels, keep keys, boxes, sizes and masks as lists."""
    return {"image": torch.stack([s["image"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
            "key": [s["key"] for s in samples], "boxes": [s["boxes"] for s in samples],
            "size": [s["size"] for s in samples], "mask": [s["mask"] for s in samples],
            "skipped": sum(s["skipped"] for s in samples)}


def slice_of(counts: list[int], reader: int, readers: int) -> tuple[int, int]:
    """``[start, stop)``: the samples reader ``reader`` of ``readers`` takes from a split whose
    shards hold ``counts`` samples, numbered across the shards in order. Slices differ by at most
    one sample and together cover the split once."""
    total = sum(counts)
    return reader * total // readers, (reader + 1) * total // readers


def _sliced_samples(urls: list[str], counts: list[int], reader: int, readers: int,
                    handler: "_SkipLog") -> Iterator[dict]:
    """The raw samples of this reader's :func:`slice_of` the split; a sample's number is the
    samples of the shards before its own plus its position in its shard (a member that does not
    parse shifts the positions alike for every reader, so no sample is read twice)."""
    import webdataset as wds

    register_webdataset_opener()
    start, stop = slice_of(counts, reader, readers)
    first = 0  # number of the current shard's first sample
    for url, count in zip(urls, counts):
        if first >= stop:
            break
        if first + count > start:
            for position, raw in enumerate(wds.tarfile_to_samples(handler=handler)([{"url": url}])):
                if position >= count or first + position >= stop:
                    break
                if first + position >= start:
                    yield raw
        first += count


class EvalStream(IterableDataset):
    """Every sample of ``urls`` exactly once across ``world_size`` ranks and their DataLoader
    workers: cut by sample when ``counts`` (samples per shard, as the manifest records) is given,
    else by shard.

    Yields ``{"key", "image": uint8 (3,S,S), "label", "boxes": inclusive (M,4) int64 in the
    stored image's pixels, "size": stored (w, h), "mask": uint8 (S,S) or None, "skipped"}``
    (boxes are not resized here: the evaluator maps them to its score-map size with
    wsolevaluation's truncation); batch with ``collate_fn=collate_eval``. ``skipped`` counts
    corrupt samples dropped just before this one.
    """

    def __init__(self, urls: list[str], *, input_size: int, rank: int = 0, world_size: int = 1,
                 counts: list[int] | None = None):
        super().__init__()
        if counts is not None and len(counts) != len(urls):
            raise ValueError(f"{len(counts)} shard counts for {len(urls)} shards")
        self.urls, self.input_size, self.rank, self.world_size = list(urls), input_size, rank, world_size
        self.counts = None if counts is None else [int(n) for n in counts]

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, nworkers = _rank_worker(self.rank, self.world_size)
        handler = _SkipLog()
        if self.counts is not None:
            stream = _sliced_samples(self.urls, self.counts, rank * nworkers + worker, world * nworkers, handler)
        else:
            stream = _raw_samples(self.urls, resampled=False, seed=0, shuffle_buffer=0, handler=handler, rank=rank,
                                  world_size=world, worker=worker, num_workers=nworkers, epoch=0)
        pending = logged = 0
        for raw in stream:
            try:
                s = decode_sample(raw)
            except Exception as exc:  # noqa: BLE001 - skipped and counted
                pending += 1
                logged += 1
                if logged <= 5:  # the first few by name; every one is counted in "skipped"
                    log.warning("skipping corrupt sample %s: %s", raw.get("__key__"), exc)
                continue
            mask = None
            if s.mask is not None:
                mask = torch.from_numpy(np.array(s.mask.convert("L").resize((self.input_size,) * 2, Image.NEAREST)))
            yield {"key": s.key, "image": pil_to_uint8(s.image.resize((self.input_size,) * 2, Image.BILINEAR)), "label": s.label, "boxes": s.boxes, "size": s.image.size,
                   "mask": mask, "skipped": pending + handler.count}
            pending, handler.count = 0, 0
        if pending or handler.count:
            log.warning("%d corrupt samples skipped at the end of rank %d worker %d's shards", pending + handler.count,
                        rank, worker)
