"""Inference with a trained checkpoint: class, score, box and heatmap for one image; and finding
that checkpoint (a file, or a model in the MLflow registry) for ``bgwsol localize`` and ``bgwsol serve``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from bgwsol.precision import InferencePrecision


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
    threshold ``tau``: by default the one chosen on validation at IoU 50 (``taus[50]``), else 0.5;
    and, for :meth:`mask`, the mask threshold registered with it (``mask_tau``)."""

    def __init__(self, state: dict, tau: float | None = None, precision: "str | InferencePrecision" = "fp32"):
        from bgwsol.checkpoint import model_from_state
        from bgwsol.precision import inference_precision

        self.model, self.method, self.cfg = model_from_state(state)
        # channels_last, fp32 or bf16 autocast (bgwsol.precision)
        self.precision = inference_precision("cpu", precision) if isinstance(precision, str) else precision
        self.precision.prepare(self.model)
        self.classes = list(state["classes"])
        self.class_names = list(state.get("class_names") or self.classes)
        self.tau = float(tau if tau is not None else state.get("taus", {}).get(50, state.get("tau", 0.5)))
        # the mask threshold chosen on validation masks (best mask mIoU); None when the data had none
        self.mask_tau: float | None = state.get("mask_tau")

    def mask(self, found: "Localization") -> tuple[np.ndarray, str]:
        """``(bool (H, W) mask at the image's size, where its threshold came from)``: the heatmap at
        the mask threshold chosen on validation, or, for a model trained without masks, at the box
        threshold (IoU 50)."""
        if self.mask_tau is not None:
            return found.heatmap >= self.mask_tau, f"mask threshold {self.mask_tau:.2f} (best mask mIoU on validation)"
        return found.heatmap >= self.tau, (f"mask threshold {self.tau:.2f} (the box threshold: the model was scored "
                                           "without validation masks)")

    @classmethod
    def from_checkpoint(cls, path: str | Path, tau: float | None = None, precision: str = "fp32") -> "Localizer":
        """From ``checkpoint.pt`` or the folder holding it (a run's checkpoint or a registered model's)."""
        from bgwsol.checkpoint import load_checkpoint

        return cls(load_checkpoint(path), tau, precision)

    def __call__(self, image: Image.Image) -> Localization:
        return self.batch([image])[0]

    @torch.no_grad()
    def batch(self, images: list[Image.Image], sizes: list[tuple[int, int]] | None = None) -> list[Localization]:
        """Localize several images in one forward pass (each resized to the input size). Boxes and
        heatmaps come back at each image's own size, or at ``sizes`` ``[(w, h)]`` where given: the
        full size of an image decoded smaller (JPEG draft mode, :func:`bgwsol.data.images.decode_rgb`)."""
        from bgwsol.data.loader import normalize, pil_to_uint8
        from bgwsol.evaluation.evaluator import upsample_maps
        from bgwsol.evaluation.scoremaps import boxes_at_threshold

        images = [image.convert("RGB") for image in images]
        sizes = sizes or [image.size for image in images]
        size = self.cfg.data.input_size
        x = normalize(torch.stack([pil_to_uint8(image.resize((size, size), Image.BILINEAR)) for image in images]))
        out = self.precision.forward(self.model, x)
        probs = torch.softmax(out["logits"], 1)
        labels = probs.argmax(1)
        s = self.cfg.eval.scoremap_size
        smaps = upsample_maps(self.method.scoremaps(out, labels), s).numpy()
        found = []
        for (w, h), label, row, smap in zip(sizes, labels.tolist(), probs, smaps):
            x0, y0, x1, y1 = (int(v) for v in boxes_at_threshold(smap, self.tau)[0])
            box = (int(x0 * w / s), int(y0 * h / s), min(w - 1, int(x1 * w / s)), min(h - 1, int(y1 * h / s)))
            heat = np.asarray(Image.fromarray((smap * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                              np.float32) / 255.0
            found.append(Localization(label, self.class_names[label], float(row[label]), box, heat))
        return found


def registered_artifacts(model: str, tracking_uri: str) -> str:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> where that version's files are,
    asked of ``tracking_uri``'s registry (MLflow itself resolves ``models:/`` with the registry of
    the environment, MLFLOW_TRACKING_URI, whatever tracking URI it is given). Other URIs as they are."""
    if not tracking_uri or not model.startswith("models:/"):
        return model
    from mlflow import MlflowClient

    name, alias_sep, rest = model[len("models:/"):].partition("@")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if alias_sep:
        version = client.get_model_version_by_alias(name, rest).version
    elif "/" in name:
        name, version = name.split("/", 1)
    else:
        return model  # a logged model's id: the tracking store resolves it
    return client.get_model_version_download_uri(name, version)


def load_localizer(model: str, tau: float | None, tracking_uri: str, precision: str = "fp32"):
    """A Localizer from a checkpoint (``checkpoint.pt`` or its folder) or a registered model URI
    (``models:/name@alias``, ``runs:/...``): the checkpoint file the registry logged with it;
    running in ``precision`` (``fp32`` or ``bf16``, :mod:`bgwsol.precision`)."""
    from bgwsol.checkpoint import CHECKPOINT_FILE

    if Path(model).exists():
        return Localizer.from_checkpoint(model, tau, precision)
    import mlflow.artifacts

    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=registered_artifacts(model, tracking_uri),
                                                      tracking_uri=tracking_uri or None))
    found = sorted(folder.rglob(CHECKPOINT_FILE))
    if not found:
        raise FileNotFoundError(f"{model} holds no {CHECKPOINT_FILE}: not a bgwsol model")
    return Localizer.from_checkpoint(found[0], tau, precision)
