"""Inference with a trained checkpoint: class, score, box and heatmap for one image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass
class Localization:
    """What the model says about one image.

    Attributes:
        label: predicted class index; ``class_name`` its name.
        score: softmax probability of that class.
        box: ``(x0, y0, x1, y1)`` inclusive corners in the input image's pixels.
        heatmap: ``(H, W)`` float32 in [0, 1] at the input image's size.
    """

    label: int
    class_name: str
    score: float
    box: tuple[int, int, int, int]
    heatmap: np.ndarray


class Localizer:
    """Wraps a checkpoint state (:mod:`bgwsol.checkpoint`'s layout) and an operating
    threshold ``tau``: by default the one chosen on validation at IoU 50 (``taus[50]``), else 0.5."""

    def __init__(self, state: dict, tau: float | None = None):
        from bgwsol.checkpoint import model_from_state

        self.model, self.method, self.cfg = model_from_state(state)
        self.classes = list(state["classes"])
        self.class_names = list(state.get("class_names") or self.classes)
        self.tau = float(tau if tau is not None else state.get("taus", {}).get(50, state.get("tau", 0.5)))

    @classmethod
    def from_checkpoint(cls, path: str | Path, tau: float | None = None) -> "Localizer":
        """From ``checkpoint.pt`` or the folder holding it (a run's checkpoint or a registered model's)."""
        from bgwsol.checkpoint import load_checkpoint

        return cls(load_checkpoint(path), tau)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Localization:
        from bgwsol.data.loader import normalize, pil_to_uint8
        from bgwsol.evaluation.evaluator import upsample_maps
        from bgwsol.evaluation.scoremaps import boxes_at_threshold

        image = image.convert("RGB")
        w, h = image.size
        size = self.cfg.data.input_size
        x = normalize(pil_to_uint8(image.resize((size, size), Image.BILINEAR))[None])
        out = self.model(x)
        probs = torch.softmax(out["logits"].float(), 1)[0]
        label = int(probs.argmax())
        s = self.cfg.eval.scoremap_size
        smap = upsample_maps(self.method.scoremaps(out, torch.tensor([label])), s)[0].numpy()
        boxes = boxes_at_threshold(smap, self.tau)
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        box = (int(x0 * w / s), int(y0 * h / s), min(w - 1, int(x1 * w / s)), min(h - 1, int(y1 * h / s)))
        heat = np.asarray(Image.fromarray((smap * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                          np.float32) / 255.0
        return Localization(label, self.class_names[label], float(probs[label]), box, heat)
