"""Pictures a person would rather look at: heatmap overlays with predicted and true boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def heat_colors(scoremap: np.ndarray) -> np.ndarray:
    """``(H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8, a blue-to-red ramp."""
    s = np.clip(scoremap, 0, 1)
    r = np.clip(1.5 * s - 0.25, 0, 1)
    g = np.clip(1.5 - np.abs(3 * s - 1.5), 0, 1) * 0.9
    b = np.clip(1.25 - 1.5 * s, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, scoremap: np.ndarray, pred_boxes: np.ndarray, gt_boxes: np.ndarray,
            alpha: float = 0.45) -> Image.Image:
    """Blend ``image`` ``(H, W, 3)`` uint8 with the heatmap of ``scoremap`` ``(H, W)``; draw
    ground-truth boxes in green and predicted boxes in red (inclusive corners, map pixels)."""
    blended = ((1 - alpha) * image.astype(np.float32) + alpha * heat_colors(scoremap)).astype(np.uint8)
    im = Image.fromarray(blended)
    draw = ImageDraw.Draw(im)
    for box in np.asarray(gt_boxes).reshape(-1, 4):
        draw.rectangle(box.tolist(), outline=(40, 230, 40), width=2)
    for box in np.asarray(pred_boxes).reshape(-1, 4):
        draw.rectangle(box.tolist(), outline=(240, 30, 30), width=2)
    return im


def grid(tiles: list[Image.Image], columns: int, path: str | Path | None = None) -> Image.Image:
    """Tile equally sized images row-major; save to ``path`` (PNG) when given."""
    if not tiles:
        raise ValueError("no tiles")
    w, h = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    out = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, t in enumerate(tiles):
        out.paste(t, ((i % columns) * w, (i // columns) * h))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        out.save(path)
    return out
