"""The one results table: its columns, its lines, how a cell reads, which cell is bold, and the
ranking line. The main job's table (console, ``comparison.md``, ``results.json``), the
comparison's (console, ``comparison.md``, ``comparison.json``, MLflow) and both ``report.html``
pages render these lines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# metric key -> column header, in table order (test split, percent)
COLUMNS = {"maxboxacc_v2": "MaxBoxAccV2", "boxacc_v2_at_tau": "BoxAccV2 @ val τ", "maxboxacc_iou70": "IoU70",
           "gt_known_loc": "GT-known Loc", "top1_loc": "Top-1 Loc", "top5_loc": "Top-5 Loc", "top1_cls": "Top-1 cls",
           "pxap": "PxAP", "mask_miou": "mask mIoU"}
RANK_METRIC = "maxboxacc_v2"  # what the ranking line (table, report, MLflow tag) orders methods by


@dataclass
class Line:
    """One line of the table: a method's map (``ranked``) or another map variant of its model
    (not a method: never bold, never ranked); ``per_seed`` is metric -> the value of each run."""

    label: str
    key: str
    per_seed: dict[str, list[float]]
    ranked: bool = True

    @property
    def seeds(self) -> int:
        return max((len(v) for v in self.per_seed.values()), default=0)

    def mean(self, metric: str) -> float | None:
        vals = self.per_seed.get(metric)
        return float(np.mean(vals)) if vals else None

    def to_json(self) -> dict:
        """``method`` (label), ``key``, ``seeds``, metric -> ``(mean, population std)``, ``per_seed``."""
        out: dict = {"method": self.label, "key": self.key, "seeds": self.seeds, "per_seed": {}}
        for m in COLUMNS:
            if self.per_seed.get(m):
                out[m] = (float(np.mean(self.per_seed[m])), float(np.std(self.per_seed[m])))
                out["per_seed"][m] = list(self.per_seed[m])
        return out


def single(label: str, key: str, metrics: dict[str, float], ranked: bool = True) -> Line:
    """The line of one run's test metrics."""
    return Line(label, key, {m: [float(v)] for m, v in metrics.items() if m in COLUMNS}, ranked)


def ranking(lines: list[Line]) -> str:
    """Which method ranks first on MaxBoxAccV2 (means over seeds) and by how much, e.g.
    ``First on MaxBoxAccV2: bgwsol 62.0, ahead of bas (51.0) by 11.0 points.``; empty with fewer
    than two ranked lines."""
    means = {line.label: line.mean(RANK_METRIC) for line in lines if line.ranked and line.mean(RANK_METRIC) is not None}
    if len(means) < 2:
        return ""
    first, second = sorted(means, key=lambda k: -means[k])[:2]
    gap = means[first] - means[second]
    if gap == 0:
        return f"Tied first on {COLUMNS[RANK_METRIC]}: {first} and {second} ({means[first]:.1f})."
    return (f"First on {COLUMNS[RANK_METRIC]}: {first} {means[first]:.1f}, ahead of {second} ({means[second]:.1f}) "
            f"by {gap:.1f} points.")


def markdown(lines: list[Line]) -> str:
    """The table in Markdown: a cell is the mean over seeds ``± population std`` when any line has
    more than one seed, else the value; the best ranked mean of each column is bold; then the
    ranking line."""
    spread = any(line.seeds > 1 for line in lines)
    ranked = [line for line in lines if line.ranked]
    best = {m: max((v for v in (line.mean(m) for line in ranked) if v is not None), default=None) for m in COLUMNS}
    out = ["| method | seeds | " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for line in lines:
        cells = []
        for m in COLUMNS:
            mean = line.mean(m)
            if mean is None:
                cells.append("–")
                continue
            text = f"{mean:.1f} ± {float(np.std(line.per_seed[m])):.1f}" if spread else f"{mean:.1f}"
            cells.append(f"**{text}**" if line.ranked and len(ranked) > 1 and mean == best[m] else text)
        out.append(f"| {line.label} | {line.seeds} | " + " | ".join(cells) + " |")
    rank = ranking(lines)
    return "\n".join(out) + (f"\n\n{rank}" if rank else "")
