"""``report.html``: one static page per job that a person opens instead of reading JSON.

It holds the test table; box accuracy against the score-map threshold at each IoU for every
model, with the threshold each chose on validation marked (the curve wsolevaluation draws);
Top-1 Loc per class; the same test images under every model (heatmap, true box in green,
predicted box in red), the best and worst cases of the last model among them; and the loss
terms per epoch. Pictures are PNGs embedded in the page: it is one file, opened from disk or
from MLflow's artifact view.

Every number in the page comes from :class:`ModelReport` objects, which the job also writes to
``results.json``; each table cell carries its full-precision value as ``data-value``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgwsol.evaluation.scoring import ExampleMaps
from bgwsol.workflows.table import COLUMNS

PER_CLASS_SHOWN = 40  # with more classes, the page lists the worst and the best 20 of the last model


@dataclass
class ModelReport:
    """One table row: test metrics (percent), the thresholds chosen on validation (IoU -> τ),
    the test split's box accuracy curves (``{"thresholds": [T], "boxacc": {IoU: [T]}}``), Top-1
    Loc per class name at τ (IoU 50), and the epoch records of the run that trained it."""

    label: str
    test: dict[str, float]
    taus: dict[int, float]
    curves: dict
    per_class: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # every epoch of the run, not only up to the best
    run: str = ""                   # the trained run this row scores (its loss panel's title); "" = label
    best_epoch: int | None = None   # the epoch (0-based) of the checkpoint this row scores

    def to_json(self) -> dict:
        return {"label": self.label, "test": self.test, "taus": {str(k): v for k, v in self.taus.items()},
                "curves": {"thresholds": self.curves["thresholds"],
                           "boxacc": {str(k): v for k, v in self.curves["boxacc"].items()}},
                "per_class_top1_loc": self.per_class,
                "history": [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in self.history]}


def model_report(label: str, final, state: dict, variant: str = "main", run: str = "") -> ModelReport:
    """The row ``label`` of map ``variant`` of a checkpoint ``state`` scored as ``final``
    (:class:`bgwsol.evaluation.scoring.FinalEvaluation`); ``run`` names the trained run (the loss
    panel's title), and the checkpoint's epoch is marked there as the best."""
    return ModelReport(label, dict(final.test[variant]), dict(final.taus[variant]), final.test_curves.get(variant, {}),
                       per_class_by_name(final, variant, class_names(state)), list(state.get("history", [])),
                       run or label, state.get("epoch"))


def class_names(state: dict) -> list[str]:
    """A checkpoint's class names by index (its class ids where the dataset has no names)."""
    return list(state.get("class_names") or state.get("classes") or [])


def per_class_by_name(final, variant: str, names: list[str]) -> dict[str, float]:
    """``final.test_per_class[variant]`` keyed by class name."""
    return {(names[i] if i < len(names) else str(i)): v for i, v in final.test_per_class.get(variant, {}).items()}


# ------------------------------------------------------------------------------ pictures


def _png(figure_or_image) -> str:
    """A data URI of a matplotlib figure or a PIL image, as PNG."""
    buffer = io.BytesIO()
    if hasattr(figure_or_image, "savefig"):
        import matplotlib.pyplot as plt

        figure_or_image.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure_or_image)
    else:
        figure_or_image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display: a headless backend
    import matplotlib.pyplot as plt

    return plt


def curves_figure(models: list[ModelReport]):
    """Box accuracy (percent) against the map threshold, one panel per IoU; each model's
    validation τ marked with a dot on its curve and a dotted line."""
    plt = _pyplot()
    ious = sorted({int(i) for m in models for i in m.curves.get("boxacc", {})})
    fig, axes = plt.subplots(1, len(ious), figsize=(4.2 * len(ious), 3.4), squeeze=False, sharey=True)
    for ax, iou in zip(axes[0], ious):
        for index, m in enumerate(models):
            if iou not in m.curves.get("boxacc", {}):
                continue
            color = f"C{index}"
            thresholds, acc = np.asarray(m.curves["thresholds"]), np.asarray(m.curves["boxacc"][iou])
            ax.plot(thresholds, acc, color=color, label=m.label)
            tau = m.taus.get(iou)
            if tau is not None:
                at = float(acc[int(np.argmin(np.abs(thresholds - tau)))])
                ax.axvline(tau, color=color, linestyle=":", linewidth=1)
                ax.plot([tau], [at], "o", color=color, markersize=5)
        ax.set_title(f"IoU ≥ {iou / 100:.1f}")
        ax.set_xlabel("score-map threshold")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("BoxAcc on test (%)")
    axes[0][-1].legend(fontsize=8, loc="best")
    return fig


def loss_figure(models: list[ModelReport]):
    """The mean training loss terms of every epoch, one panel per trained run, titled by the run
    (rows that score map variants or post-hoc maps of the same run share its panel), with the
    epoch of the scored checkpoint marked."""
    plt = _pyplot()
    runs: dict[str, ModelReport] = {}
    for m in models:
        if m.history:
            runs.setdefault(m.run or m.label, m)
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    for ax, (title, m) in zip(axes[0], runs.items()):
        history = m.history
        terms = sorted({k for r in history for k in r if k.startswith("train_")})
        epochs = [int(r.get("epoch", i)) + 1 for i, r in enumerate(history)]
        for term in terms:
            ax.plot(epochs, [r.get(term, math.nan) for r in history], marker=".", label=term[len("train_"):])
        if m.best_epoch is not None:
            ax.axvline(m.best_epoch + 1, color="0.4", linestyle=":", linewidth=1, label="best epoch (kept)")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean loss")
    return fig


def _example_pixels(test_urls: list[str], input_size: int, count: int, size: int) -> tuple[np.ndarray, list]:
    """The example images' pixels ``(N, size, size, 3)`` uint8 and their ``(id, boxes, mask)``
    targets at the score-map resolution (the images :func:`score_examples` scored)."""
    import torch

    from bgwsol.evaluation.evaluator import batch_targets
    from bgwsol.evaluation.scoring import overlay_batch

    batch = overlay_batch(test_urls, input_size, count)
    pixels = torch.nn.functional.interpolate(batch["image"].float(), size=(size, size), mode="bilinear",
                                             align_corners=False)
    return pixels.clamp(0, 255).byte().permute(0, 2, 3, 1).numpy(), list(batch_targets(batch, size))


def examples_grid(rows: dict[str, ExampleMaps], test_urls: list[str], input_size: int, count: int = 12):
    """A picture (PIL) of the first ``count`` example images, a row per map variant (label -> its
    :class:`ExampleMaps`), each at its own threshold: heatmap, predicted boxes in red, true ones in
    green. Drawn from the maps already scored: no second pass through the model."""
    from bgwsol.evaluation.scoremaps import boxes_at_threshold
    from bgwsol.evaluation.viz import grid, overlay

    count = min(count, *(ex.maps.shape[0] for ex in rows.values()))
    size = next(iter(rows.values())).maps.shape[-1]
    pixels, targets = _example_pixels(test_urls, input_size, count, size)
    tiles = []
    for ex in rows.values():
        maps = ex.maps[:count].astype(np.float32) / 255.0
        tiles += [overlay(pixels[j], maps[j], boxes_at_threshold(maps[j], ex.tau), targets[j][1]) for j in range(count)]
    return grid(tiles, columns=count)


def example_tiles(rows: dict[str, ExampleMaps], test_urls: list[str], input_size: int, pick: int = 8,
                  rank_by: str | None = None) -> tuple[list[str], dict[str, list]]:
    """The same test images under every row (label -> its :class:`ExampleMaps`): ``pick`` of
    them, the best and the worst by the IoU of row ``rank_by`` (default: the last) and ones in
    between. Returns the column titles and, per label, ``(overlay tile, caption)`` pairs (PIL
    images at the score-map resolution, "IoU 0.62")."""
    from bgwsol.evaluation.scoremaps import boxes_at_threshold
    from bgwsol.evaluation.viz import overlay

    last = rows[rank_by] if rank_by in rows else list(rows.values())[-1]
    count = last.maps.shape[0]
    pixels, targets = _example_pixels(test_urls, input_size, count, last.maps.shape[-1])
    order = np.argsort(-last.ious, kind="stable")  # best first
    third = max(1, min(pick, count) // 3)
    rest = max(0, min(pick, count) - 2 * third)
    middle = order[max(0, count // 2 - rest // 2):][:rest]
    chosen = [*order[:third], *middle, *order[::-1][:third][::-1]]
    titles = ([f"best {i + 1}" for i in range(third)] + ["typical"] * len(middle)
              + [f"worst {third - i}" for i in range(third)])
    tiles = {}
    for label, ex in rows.items():
        maps = ex.maps.astype(np.float32) / 255.0
        tiles[label] = [(overlay(pixels[j], maps[j], boxes_at_threshold(maps[j], ex.tau), targets[j][1]),
                         f"IoU {ex.ious[j]:.2f}") for j in chosen]
    return titles, tiles


# ------------------------------------------------------------------------------ the page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 3px 9px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; } .note { color: #666; font-size: 0.9em; }
.examples td { padding: 2px; text-align: center; font-size: 0.85em; }
.examples img { width: 150px; display: block; image-rendering: auto; }
"""


def _cell(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "<td>–</td>"
    return f'<td data-value="{value!r}">{value:.1f}</td>'


def metrics_table(models: list[ModelReport]) -> str:
    shown = [k for k in COLUMNS if any(k in m.test for m in models)]
    head = "".join(f'<th data-key="{k}">{html.escape(COLUMNS[k])}</th>' for k in shown)
    body = "".join(f'<tr data-model="{html.escape(m.label)}"><td>{html.escape(m.label)}</td>'
                   + "".join(_cell(m.test.get(k)) for k in shown) + "</tr>" for m in models)
    return f'<table id="metrics"><tr><th>model</th>{head}</tr>{body}</table>'


def per_class_table(models: list[ModelReport]) -> str:
    ranked = models[-1].per_class
    names = sorted(ranked, key=lambda n: ranked[n])
    note = ""
    if len(names) > PER_CLASS_SHOWN:
        half = PER_CLASS_SHOWN // 2
        note = (f'<p class="note">{len(names)} classes: the {half} worst and the {half} best of '
                f'{html.escape(models[-1].label)}.</p>')
        names = names[:half] + names[-half:]
    head = "".join(f"<th>{html.escape(m.label)}</th>" for m in models)
    body = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(_cell(m.per_class.get(n)) for m in models) + "</tr>"
                   for n in names)
    return f'{note}<table id="per-class"><tr><th>class</th>{head}</tr>{body}</table>'


def examples_table(titles: list[str], tiles: dict[str, list]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
    body = "".join(f"<tr><td>{html.escape(label)}</td>"
                   + "".join(f'<td><img alt="{html.escape(label)}, {html.escape(t)}" src="{_png(tile)}">'
                             f"<span>{html.escape(caption)}</span></td>"
                             for t, (tile, caption) in zip(titles, row)) + "</tr>"
                   for label, row in tiles.items())
    return f'<table class="examples"><tr><th></th>{head}</tr>{body}</table>'


def write_report(path: str | Path, title: str, models: list[ModelReport], examples: tuple[list[str], dict] | None = None,
                 notes: list[str] = ()) -> Path:
    """Write the page to ``path`` (``report.html``); ``notes`` are lines shown under the title."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts.append("<h2>Test split</h2><p class='note'>Percent; each model's checkpoint and thresholds were chosen "
                 "on the validation split, the test split was read once.</p>" + metrics_table(models))
    if any(m.curves for m in models):
        parts.append("<h2>Box accuracy against the threshold</h2><p class='note'>Test split; a dot and a dotted line "
                     "mark the threshold each model chose on validation.</p>"
                     f'<img id="curves" alt="box accuracy curves" src="{_png(curves_figure(models))}">')
    if any(m.per_class for m in models):
        parts.append("<h2>Top-1 Loc per class</h2><p class='note'>Test split, at IoU 0.5 and the validation "
                     "threshold.</p>" + per_class_table(models))
    if examples is not None:
        parts.append("<h2>The same test images under every model</h2><p class='note'>Heatmap, true box green, "
                     "predicted box red at the validation threshold; the best IoU of its boxes below.</p>" + examples_table(*examples))
    losses = loss_figure(models)
    if losses is not None:
        parts.append(f'<h2>Training loss terms</h2><img id="losses" alt="loss curves" src="{_png(losses)}">')
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
