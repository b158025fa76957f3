"""In-process torch datasets over reader samples, and the background-mixing batch sampler."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from bgwsol.data.sources.records import Sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(size: int) -> v2.Compose:
    """Random resized crop + flip, then float tensor normalized with ImageNet statistics."""
    return v2.Compose([
        v2.ToImage(), v2.RandomResizedCrop(size, scale=(0.4, 1.0), antialias=True), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(size: int) -> v2.Compose:
    """Resize to ``size`` x ``size`` (no crop, as wsolevaluation), normalized."""
    return v2.Compose([
        v2.ToImage(), v2.Resize((size, size), antialias=True),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_rgb(path, min_short_side: int = 0) -> Image.Image:
    """Decode any image file (a local path or an ``s3://`` URL) to RGB (grayscale, CMYK, palette and
    alpha converted).

    With ``min_short_side`` a JPEG is decoded at the smallest DCT scale that keeps its shorter
    side at least that long (``Image.draft``): a 2000-pixel photo meant for a 224-pixel input
    decodes several times faster.
    """
    from bgwsol.data.sources.source_tree import image_file

    with Image.open(image_file(path)) as im:
        if min_short_side and im.format == "JPEG":
            scale = min_short_side / min(im.size)
            if scale < 1:
                im.draft("RGB", (round(im.size[0] * scale), round(im.size[1] * scale)))
        return im.convert("RGB")


class SampleDataset(Dataset):
    """``samples[i]`` -> ``{"image": (3, S, S) float, "label": int, "index": i}``.

    ``decode_short_side``: JPEGs are decoded no larger than needed for this shorter side (0: full).
    """

    def __init__(self, samples: list[Sample], transform: v2.Compose, decode_short_side: int = 0):
        self.samples = samples
        self.transform = transform
        self.decode_short_side = decode_short_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return {"image": self.transform(load_rgb(s.path, self.decode_short_side)), "label": s.label, "index": i}


class MixedBatchSampler(Sampler[list[int]]):
    """Batches over ``[objects..., backgrounds...]`` (a ConcatDataset in that order).

    Each epoch visits every object image once in a seeded random order; each batch of
    ``batch_size`` holds ``round(batch_size * bg_ratio)`` background images drawn at random.
    Call :meth:`set_epoch` before each epoch for a new order.
    """

    def __init__(self, num_objects: int, num_background: int, batch_size: int, bg_ratio: float, seed: int):
        if num_background == 0:
            bg_ratio = 0.0
        self.n_bg = int(round(batch_size * bg_ratio))
        self.n_obj = batch_size - self.n_bg
        if self.n_obj <= 0:
            raise ValueError(f"bg_ratio {bg_ratio} leaves no object image in a batch of {batch_size}")
        self.num_objects, self.num_background, self.seed, self.epoch = num_objects, num_background, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_objects // self.n_obj

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_objects)
        for b in range(len(self)):
            batch = order[b * self.n_obj:(b + 1) * self.n_obj].tolist()
            if self.n_bg:
                batch += (self.num_objects + rng.integers(0, self.num_background, self.n_bg)).tolist()
            yield batch
