"""Inference with a trained checkpoint: class, score, box and heatmap for one image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bgwsol.config import RunConfig, from_dict


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
    """Wraps a checkpoint state (``model``, ``config``, ``classes``) and an operating threshold ``tau``."""

    def __init__(self, state: dict, tau: float = 0.5, class_names: list[str] | None = None):
        from bgwsol.methods import build_method
        from bgwsol.training.engine import build_model

        self.cfg = from_dict(RunConfig, state["config"])
        self.classes = list(state["classes"])
        self.class_names = class_names or self.classes
        self.method = build_method(self.cfg.method)
        self.model = build_model(self.cfg, len(self.classes), self.method)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.tau = float(tau)

    @classmethod
    def from_checkpoint(cls, path: str | Path, tau: float = 0.5) -> "Localizer":
        return cls(torch.load(path, map_location="cpu", weights_only=False), tau)

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
