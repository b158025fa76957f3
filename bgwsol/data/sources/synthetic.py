"""Seeded synthetic WSOL data written in the real ILSVRC and CUB layouts.

Every object is a large *body* whose striped texture is shared by all classes, carrying a
small class-specific *mark* (a saturated shape) near the body's edge, pasted on clutter
(muted blobs, gradients, noise). The background set is the same clutter with no object.
Only the mark tells the class, so a classifier's CAM lights up the mark -- a small,
off-centre part -- while the ground-truth box covers the whole body. Something that has
seen the background set can tell the body (unlike any background) from clutter. That is
the part-vs-whole failure WSOL methods are about, with exact boxes and masks.

Layouts written under ``root``:

* ``ilsvrc/``: ``LOC_synset_mapping.txt``, ``LOC_train_solution.csv``,
  ``LOC_val_solution.csv``, ``Data/CLS-LOC/{train/<wnid>/<wnid>_<n>.JPEG,
  val/ILSVRC2012_val_<8 digits>.JPEG}``, VOC XML in ``Annotations/CLS-LOC/``, and PNG masks
  in ``Masks/CLS-LOC/`` (not part of ILSVRC; used for PxAP).
* ``cub/CUB_200_2011/``: ``images.txt``, ``image_class_labels.txt``,
  ``train_test_split.txt``, ``bounding_boxes.txt`` (x, y, w, h), ``classes.txt``,
  ``images/<class>/<name>.jpg`` and ``masks/`` likewise.
* ``background/``: ``bg_<n>.jpg``.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

MARK_SHAPES = ("disc", "square", "triangle", "cross", "diamond", "ring", "bar", "star")
MARK_COLORS = ((235, 30, 30), (30, 90, 240), (250, 210, 20), (30, 200, 60))


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and knobs of the synthetic datasets (all counts are images)."""

    seed: int = 0
    num_classes: int = 8
    train_per_class: int = 120
    test_per_class: int = 30
    num_background: int = 300
    cub_train_per_class: int = 20
    cub_test_per_class: int = 10
    min_side: int = 112
    max_side: int = 176
    two_object_prob: float = 0.2
    jpeg_quality: int = 90
    write_cub: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(MARK_SHAPES) * len(MARK_COLORS):
            raise ValueError(f"num_classes must be in [2, {len(MARK_SHAPES) * len(MARK_COLORS)}]")
        if self.min_side < 32 or self.max_side < self.min_side:
            raise ValueError("need 32 <= min_side <= max_side")


def wnid_of(label: int) -> str:
    """Synthetic WordNet-style id of class ``label`` (``n9000000<label>``-like, 8 digits)."""
    return f"n{90000000 + label:08d}"


# ----------------------------------------------------------------------------- painting

def _muted_color(rng: np.random.Generator) -> tuple[int, int, int]:
    h, s, v = rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.85)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def _clutter(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A cluttered background, ``(H, W, 3)`` float32 in [0, 255]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = np.array(_muted_color(rng), np.float32), np.array(_muted_color(rng), np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2
    img = Image.fromarray(((1 - ramp)[..., None] * c0 + ramp[..., None] * c1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(int(rng.integers(10, 22))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.04, 0.25) * side, rng.uniform(0.04, 0.25) * side
        color = _muted_color(rng)
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=color)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=color)
        elif kind == 2:
            pts = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in rng.uniform(0, 2 * np.pi, 3)]
            draw.polygon(pts, fill=color)
        else:
            draw.line([cx - rx, cy - ry, cx + rx, cy + ry], fill=color, width=int(rng.integers(1, 4)))
    out = np.asarray(img, dtype=np.float32)
    # low-frequency blotches plus pixel noise, so flat regions are not trivially "background"
    blotch = np.stack([
        np.asarray(Image.fromarray(rng.normal(128, 30, size=(max(2, height // 16), max(2, width // 16)))
                                   .clip(0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC),
                   dtype=np.float32) - 128
        for _ in range(3)
    ], axis=-1)
    out = out + 0.6 * blotch + rng.normal(0, 6, size=out.shape).astype(np.float32)
    return out


def _body_polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """A rotated superellipse outline ``(P, 2)`` in (x, y) pixels."""
    exponent = rng.uniform(2.0, 4.0)
    rot = rng.uniform(0, np.pi)
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    px = rx * np.sign(c) * np.abs(c) ** (2 / exponent)
    py = ry * np.sign(s) * np.abs(s) ** (2 / exponent)
    x = cx + px * np.cos(rot) - py * np.sin(rot)
    y = cy + px * np.sin(rot) + py * np.cos(rot)
    return np.stack([x, y], axis=1)


def _stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The texture shared by all classes: sinusoidal stripes, ``(H, W, 3)`` float32."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4.5, 7.0)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    c0, c1 = np.array(_muted_color(rng), np.float32), np.array(_muted_color(rng), np.float32)
    # stripes need contrast to be a texture at all
    if np.abs(c0 - c1).sum() < 150:
        c1 = 255 - c0
    return (1 - wave)[..., None] * c0 + wave[..., None] * c1


def _draw_mark(draw: ImageDraw.ImageDraw, label: int, cx: float, cy: float, r: float) -> None:
    shape = MARK_SHAPES[label % len(MARK_SHAPES)]
    color = MARK_COLORS[(label // len(MARK_SHAPES)) % len(MARK_COLORS)]
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disc":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=color)
    elif shape == "cross":
        w = 0.35 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=max(2, int(0.4 * r)))
    elif shape == "bar":
        draw.rectangle([cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r], fill=color)
    else:  # star
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        draw.polygon(pts, fill=color)


@dataclass(frozen=True)
class RenderedImage:
    """A rendered sample: ``pixels`` ``(H, W, 3)`` uint8, ``boxes`` ``(N, 4)`` inclusive corners, ``mask`` ``(H, W)`` bool."""

    pixels: np.ndarray
    boxes: np.ndarray
    mask: np.ndarray


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One background image with no object, ``(H, W, 3)`` uint8."""
    return _clutter(rng, width, height).clip(0, 255).astype(np.uint8)


def render_object_image(rng: np.random.Generator, label: int, width: int, height: int, num_objects: int) -> RenderedImage:
    """Clutter plus ``num_objects`` bodies of class ``label``, each with its mark near an edge."""
    canvas = _clutter(rng, width, height)
    side = min(width, height)
    full_mask = np.zeros((height, width), dtype=bool)
    boxes, marks = [], []
    for k in range(num_objects):
        scale = rng.uniform(0.26, 0.40) if num_objects == 1 else rng.uniform(0.16, 0.24)
        rx = scale * side * rng.uniform(0.8, 1.25)
        ry = scale * side * rng.uniform(0.8, 1.25)
        if num_objects == 1:
            cx, cy = rng.uniform(rx, width - rx), rng.uniform(ry, height - ry)
        else:  # left and right halves, so the two bodies rarely overlap
            lo, hi = (rx, width / 2) if k == 0 else (width / 2, width - rx)
            cx, cy = rng.uniform(lo, max(lo, hi)), rng.uniform(ry, height - ry)
        poly = _body_polygon(rng, cx, cy, rx, ry)
        m = Image.new("L", (width, height), 0)
        ImageDraw.Draw(m).polygon([tuple(p) for p in poly], fill=255)
        mask = np.asarray(m) > 127
        if not mask.any():
            continue
        canvas = np.where(mask[..., None], _stripes(rng, width, height), canvas)
        full_mask |= mask
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        # the mark sits inside the body, near its edge: pick a body pixel far from the centre
        angle = rng.uniform(0, 2 * np.pi)
        r_mark = max(3.0, 0.075 * side)
        for frac in (0.72, 0.6, 0.45, 0.0):
            mx, my = cx + frac * (rx - r_mark) * np.cos(angle), cy + frac * (ry - r_mark) * np.sin(angle)
            if mask[int(np.clip(my, 0, height - 1)), int(np.clip(mx, 0, width - 1))]:
                break
        marks.append((mx, my, r_mark))
    img = Image.fromarray((canvas + rng.normal(0, 4, size=canvas.shape)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for mx, my, r in marks:
        _draw_mark(draw, label, mx, my, r)
    return RenderedImage(np.asarray(img), np.asarray(boxes, dtype=np.int64).reshape(-1, 4), full_mask)


# ----------------------------------------------------------------------------- writers

def _save_jpeg(pixels: np.ndarray, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG")


def _voc_xml(filename: str, folder: str, width: int, height: int, wnid: str, boxes: np.ndarray) -> str:
    objects = "".join(
        f"<object><name>{escape(wnid)}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for b in boxes
    )
    return (
        f"<annotation><folder>{escape(folder)}</folder><filename>{escape(filename)}</filename>"
        f"<source><database>bgwsol synthetic</database></source>"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{objects}</annotation>\n"
    )


def _image_size(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[int, int]:
    return int(rng.integers(cfg.min_side, cfg.max_side + 1)), int(rng.integers(cfg.min_side, cfg.max_side + 1))


def _num_objects(rng: np.random.Generator, cfg: SyntheticConfig) -> int:
    return 2 if rng.random() < cfg.two_object_prob else 1


def _write_ilsvrc(root: Path, cfg: SyntheticConfig, rng: np.random.Generator, progress) -> None:
    wnids = [wnid_of(k) for k in range(cfg.num_classes)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} synthetic class {k} ({MARK_SHAPES[k % len(MARK_SHAPES)]})\n" for k, w in enumerate(wnids))
    )
    train_rows, val_rows = ["ImageId,PredictionString"], ["ImageId,PredictionString"]
    for label, wnid in enumerate(wnids):
        for n in range(cfg.train_per_class):
            name = f"{wnid}_{n + 1}"
            width, height = _image_size(rng, cfg)
            r = render_object_image(rng, label, width, height, _num_objects(rng, cfg))
            _save_jpeg(r.pixels, root / "Data/CLS-LOC/train" / wnid / f"{name}.JPEG", cfg.jpeg_quality)
            _save_mask(r.mask, root / "Masks/CLS-LOC/train" / wnid / f"{name}.png")
            (root / "Annotations/CLS-LOC/train" / wnid).mkdir(parents=True, exist_ok=True)
            (root / "Annotations/CLS-LOC/train" / wnid / f"{name}.xml").write_text(
                _voc_xml(name, wnid, width, height, wnid, r.boxes))
            train_rows.append(f"{name}," + " ".join(f"{wnid} {b[0]} {b[1]} {b[2]} {b[3]}" for b in r.boxes))
            progress()
    # ILSVRC's val folder mixes classes; shuffle so the file order does not reveal labels
    val_labels = rng.permutation(np.repeat(np.arange(cfg.num_classes), cfg.test_per_class))
    for n, label in enumerate(val_labels):
        name = f"ILSVRC2012_val_{n + 1:08d}"
        wnid = wnids[int(label)]
        width, height = _image_size(rng, cfg)
        r = render_object_image(rng, int(label), width, height, _num_objects(rng, cfg))
        _save_jpeg(r.pixels, root / "Data/CLS-LOC/val" / f"{name}.JPEG", cfg.jpeg_quality)
        _save_mask(r.mask, root / "Masks/CLS-LOC/val" / f"{name}.png")
        (root / "Annotations/CLS-LOC/val").mkdir(parents=True, exist_ok=True)
        (root / "Annotations/CLS-LOC/val" / f"{name}.xml").write_text(_voc_xml(name, "val", width, height, wnid, r.boxes))
        val_rows.append(f"{name}," + " ".join(f"{wnid} {b[0]} {b[1]} {b[2]} {b[3]}" for b in r.boxes))
        progress()
    (root / "LOC_train_solution.csv").write_text("\n".join(train_rows) + "\n")
    (root / "LOC_val_solution.csv").write_text("\n".join(val_rows) + "\n")


def _write_cub(root: Path, cfg: SyntheticConfig, rng: np.random.Generator, progress) -> None:
    root.mkdir(parents=True, exist_ok=True)
    images, labels, split, bboxes, classes = [], [], [], [], []
    image_id = 0
    for label in range(cfg.num_classes):
        class_dir = f"{label + 1:03d}.Synthetic_{MARK_SHAPES[label % len(MARK_SHAPES)].title()}_{label}"
        classes.append(f"{label + 1} {class_dir}")
        for n in range(cfg.cub_train_per_class + cfg.cub_test_per_class):
            image_id += 1
            rel = f"{class_dir}/Synthetic_{label}_{n + 1:04d}.jpg"
            width, height = _image_size(rng, cfg)
            r = render_object_image(rng, label, width, height, 1)  # CUB: one bird per image
            _save_jpeg(r.pixels, root / "images" / rel, cfg.jpeg_quality)
            _save_mask(r.mask, root / "masks" / rel.replace(".jpg", ".png"))
            x0, y0, x1, y1 = (int(v) for v in r.boxes[0])
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {label + 1}")
            split.append(f"{image_id} {int(n < cfg.cub_train_per_class)}")
            bboxes.append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
            progress()
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split),
                       ("bounding_boxes.txt", bboxes), ("classes.txt", classes)):
        (root / name).write_text("\n".join(rows) + "\n")


def _write_background(root: Path, cfg: SyntheticConfig, rng: np.random.Generator, progress) -> None:
    for n in range(cfg.num_background):
        width, height = _image_size(rng, cfg)
        _save_jpeg(render_background(rng, width, height), root / f"bg_{n + 1:06d}.jpg", cfg.jpeg_quality)
        progress()


@dataclass(frozen=True)
class SyntheticPaths:
    """Where :func:`generate` wrote each dataset."""

    root: Path
    ilsvrc: Path
    cub: Path | None
    background: Path


def generate(root: str | Path, cfg: SyntheticConfig = SyntheticConfig(), *, show_progress: bool = True) -> SyntheticPaths:
    """Write the synthetic ILSVRC, CUB and background datasets under ``root``.

    Deterministic for a given ``cfg`` (including ``seed``). If ``root/synthetic.json``
    already records the same config, nothing is regenerated. The marker is written last,
    so an interrupted run is redone, not trusted.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    paths = SyntheticPaths(root, root / "ilsvrc", root / "cub" / "CUB_200_2011" if cfg.write_cub else None,
                           root / "background")
    marker = root / "synthetic.json"
    if marker.exists() and json.loads(marker.read_text()) == asdict(cfg):
        return paths
    marker.unlink(missing_ok=True)
    total = cfg.num_classes * (cfg.train_per_class + cfg.test_per_class) + cfg.num_background
    if cfg.write_cub:
        total += cfg.num_classes * (cfg.cub_train_per_class + cfg.cub_test_per_class)
    # one independent stream per dataset, so changing CUB's size leaves ILSVRC's images as they were
    seeds = np.random.SeedSequence(cfg.seed).spawn(3)
    with tqdm(total=total, desc="synthetic data", unit="img", disable=not show_progress) as bar:
        _write_ilsvrc(paths.ilsvrc, cfg, np.random.default_rng(seeds[0]), lambda: bar.update(1))
        _write_background(paths.background, cfg, np.random.default_rng(seeds[1]), lambda: bar.update(1))
        if paths.cub is not None:
            _write_cub(paths.cub, cfg, np.random.default_rng(seeds[2]), lambda: bar.update(1))
    marker.write_text(json.dumps(asdict(cfg), indent=2))
    return paths
