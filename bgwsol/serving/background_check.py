"""Background photos that look like a class (issue #36): a trained model scores every photo of a
background set, so that a user can find the ones that do not belong (a crawl for street scenes
brings dogs; a folder of landscapes holds a cliff when "cliff" is a class) and leave them out of
the next run with ``--background_exclude FILE``.

A photo's ``evidence`` is how far the classifier's top-class probability stands above chance,
``(p_top - 1/K) / (1 - 1/K)`` in [0, 1] for ``K`` classes: 0 for a photo the classifier finds
uninformative (bgwsol's ``bg`` term trains it to be uniform on background photos), 1 for a
confident class. ``fg_mass`` is the mean of the foreground map ``sigmoid(M)`` over the photo, for a
model with a foreground head (how much of it the head calls object), else empty. The list is
ranked by evidence, then by foreground mass.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from bgwsol.data.images import RejectedImage, decode_rgb
from bgwsol.data.loader import normalize, pil_to_uint8
from bgwsol.data.sources.background import read_background_folder
from bgwsol.data.storage import Location
from bgwsol.serving.localizer import Localizer

COLUMNS = ("image_id", "path", "evidence", "class_name", "class_prob", "fg_mass")


@dataclass
class BackgroundScore:
    """How much one background photo looks like a class (module docstring)."""

    image_id: str              # path relative to the background folder
    path: str                  # the photo (local path or s3:// URL)
    evidence: float            # top-class probability above chance, in [0, 1]
    class_name: str            # the class it looks like most
    class_prob: float          # its softmax probability
    fg_mass: float | None      # mean foreground probability over the photo (models with a foreground head)

    def row(self) -> dict:
        return {"image_id": self.image_id, "path": self.path, "evidence": f"{self.evidence:.4f}",
                "class_name": self.class_name, "class_prob": f"{self.class_prob:.4f}",
                "fg_mass": "" if self.fg_mass is None else f"{self.fg_mass:.4f}"}


@torch.no_grad()
def score_images(localizer: Localizer, images: list[Image.Image]) -> list[tuple[int, float, float, float | None]]:
    """``(class index, its probability, evidence, foreground mass or None)`` per image, in one forward pass."""
    size = localizer.cfg.data.input_size
    x = normalize(torch.stack([pil_to_uint8(im.convert("RGB").resize((size, size), Image.BILINEAR)) for im in images]))
    out = localizer.precision.forward(localizer.model, x)
    probs = torch.softmax(out["logits"].float(), 1)
    top, label = probs.max(1)
    k = probs.shape[1]
    evidence = ((top - 1.0 / k) / (1.0 - 1.0 / k)).clamp(0.0, 1.0)
    fg = out.get("fg_logits")
    mass = torch.sigmoid(fg.float()).flatten(1).mean(1).tolist() if fg is not None else [None] * len(images)
    return list(zip(label.tolist(), top.tolist(), evidence.tolist(), mass))


def check_background(localizer: Localizer, folder: str, batch_size: int = 16
                     ) -> tuple[list[BackgroundScore], list[tuple[str, str]]]:
    """Every photo under ``folder`` (local or ``s3://``) scored by ``localizer``'s model, ranked
    (most class-like first); and the photos that could not be read, ``(path, why)``, skipped."""
    samples = read_background_folder(folder)
    scored, skipped = [], []
    for start in range(0, len(samples), batch_size):
        part, images = [], []
        for sample in samples[start:start + batch_size]:
            try:
                images.append(decode_rgb(Location.parse(str(sample.path)).read_bytes())[0])
                part.append(sample)
            except (OSError, RejectedImage) as exc:
                skipped.append((str(sample.path), str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        if not images:
            continue
        for sample, (label, prob, evidence, mass) in zip(part, score_images(localizer, images)):
            scored.append(BackgroundScore(sample.image_id, str(sample.path), evidence, localizer.class_names[label],
                                          prob, mass))
    scored.sort(key=lambda s: (-s.evidence, -(s.fg_mass or 0.0), s.image_id))
    return scored, skipped


def write_scores(scores: list[BackgroundScore], path: str | Path) -> Path:
    """The ranked list as CSV (:data:`COLUMNS`); ``--background_exclude`` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(s.row() for s in scores)
    return path
