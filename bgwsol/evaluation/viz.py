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
            alpha: float = 0.45, caption: str = "") -> Image.Image:
    """Blend ``image`` ``(H, W, 3)`` uint8 with the heatmap of ``scoremap`` ``(H, W)``; draw
    ground-truth boxes in green and predicted boxes in red (inclusive corners, image pixels),
    and ``caption`` (e.g. ``"kangaroo 0.93"``) on a dark band at the first predicted box's top
    edge. Lines and text scale with the image, so a photo at its own size stays legible."""
    blended = ((1 - alpha) * image.astype(np.float32) + alpha * heat_colors(scoremap)).astype(np.uint8)
    im = Image.fromarray(blended)
    draw = ImageDraw.Draw(im)
    short = min(im.size)
    width = max(2, short // 160)
    for box in np.asarray(gt_boxes).reshape(-1, 4):
        draw.rectangle(box.tolist(), outline=(40, 230, 40), width=width)
    preds = np.asarray(pred_boxes).reshape(-1, 4)
    for box in preds:
        draw.rectangle(box.tolist(), outline=(240, 30, 30), width=width)
    if caption:
        from PIL import ImageFont

        font = ImageFont.load_default(size=max(11, short // 24))
        x0, y0 = (int(v) for v in (preds[0][:2] if len(preds) else (0, 0)))
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tw, th = right - left + 2 * width, bottom - top + 2 * width
        ty = y0 - th if y0 - th >= 0 else y0  # above the box, or inside it at the image's top edge
        tx = min(max(0, x0), max(0, im.size[0] - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=(240, 30, 30))
        draw.text((tx + width - left, ty + width - top), caption, fill=(255, 255, 255), font=font)
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
