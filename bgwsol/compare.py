"""Run several methods x seeds on the same data and summarize test metrics as a table."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bgwsol.config import RunConfig, replace
from bgwsol.data.splits import load_splits
from bgwsol.train import RunResult, train_and_evaluate

log = logging.getLogger(__name__)

TABLE_METRICS = ("maxboxacc_v2", "boxacc_v2_at_tau", "maxboxacc_iou70", "gt_known_loc", "top1_loc", "top1_cls", "pxap")


@dataclass
class Comparison:
    """Test metrics per method (and map variant) per seed."""

    results: dict[str, list[RunResult]]

    def rows(self) -> list[dict]:
        rows = []
        for method, runs in self.results.items():
            for variant in runs[0].test:
                if variant != "main" and method != "bgwsol":
                    continue
                name = method if variant == "main" else f"{method} ({variant.replace('_', ' ')})"
                row = {"method": name, "seeds": len(runs)}
                for m in TABLE_METRICS:
                    vals = [r.test[variant][m] for r in runs if m in r.test[variant]]
                    if vals:
                        row[m] = (float(np.mean(vals)), float(np.std(vals)))
                rows.append(row)
        return rows

    def markdown(self) -> str:
        head = "| method | seeds | " + " | ".join(TABLE_METRICS) + " |"
        lines = [head, "|" + "---|" * (len(TABLE_METRICS) + 2)]
        for row in self.rows():
            cells = [f"{row[m][0]:.1f} ± {row[m][1]:.1f}" if m in row else "–" for m in TABLE_METRICS]
            lines.append(f"| {row['method']} | {row['seeds']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def compare(base: RunConfig, methods: list[str], seeds: list[int], *, show_progress: bool = True) -> Comparison:
    """Train and test each method with each seed on ``base``'s data; outputs under ``base.output_dir``."""
    splits = load_splits(base.data.dataset, base.data.root, base.data.background or None, base.data.val_fraction)
    log.info("data: %d train, %d val, %d test images, %d background, %d classes", len(splits.train),
             len(splits.val), len(splits.test), len(splits.background), len(splits.classes))
    results: dict[str, list[RunResult]] = {}
    for method in methods:
        for seed in seeds:
            cfg = replace(base, **{"method.name": method, "train.seed": seed,
                                   "output_dir": str(Path(base.output_dir) / f"{method}-seed{seed}")})
            results.setdefault(method, []).append(train_and_evaluate(cfg, splits, show_progress=show_progress))
    comparison = Comparison(results)
    out = Path(base.output_dir)
    (out / "comparison.md").write_text(comparison.markdown() + "\n")
    (out / "comparison.json").write_text(json.dumps(comparison.rows(), indent=2))
    return comparison
