"""The engine in this process: one rank, checkpoints in a folder, the same files as a Ray Train run.

``run_dir/checkpoint_epochNNN/checkpoint.pt`` holds each epoch's checkpoint (the layout of
:mod:`bgwsol.training.engine`); a second call with the same ``run_dir`` continues from the
newest one. Used where a Ray cluster is not wanted: tests that pin the engine's behaviour,
benchmarks, a debugger.
"""

from __future__ import annotations

import json
from pathlib import Path

from bgwsol.config import RunConfig
from bgwsol.checkpoint import load_checkpoint, save_checkpoint
from bgwsol.data.plan import DataPlan, Worker
from bgwsol.training.engine import train

METRICS_FILE = "metrics.jsonl"  # one reported record per line, as Ray Train keeps them in its result


class FolderSession:
    """A :class:`~bgwsol.training.engine.Session` over a local folder."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.run_dir.glob("checkpoint_epoch*") if (p / "checkpoint.pt").is_file())

    def latest_state(self) -> dict | None:
        found = self.checkpoints()
        return load_checkpoint(found[-1]) if found else None

    def report(self, record: dict, state: dict | None) -> None:
        if state is not None:
            # written under a temporary name and renamed: a stopped run never leaves a half-written checkpoint
            final = self.run_dir / f"checkpoint_epoch{record['epoch']:03d}"
            partial = self.run_dir / f".partial_{final.name}"
            save_checkpoint(state, partial)
            partial.rename(final)
        with (self.run_dir / METRICS_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")


def fit_local(cfg: RunConfig, plan: DataPlan, run_dir: str | Path, logger=None) -> Path:
    """Train ``cfg`` on ``plan`` in this process (continuing ``run_dir`` if it holds checkpoints)."""
    train(cfg, plan, Worker(), FolderSession(run_dir), logger)
    return Path(run_dir)


def best_checkpoint(run_dir: str | Path) -> tuple[dict, dict]:
    """``(state, record)`` of the epoch with the highest validation score in ``run_dir``."""
    records = [json.loads(line) for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines()]
    scored = [r for r in records if r.get("score", -1) >= 0]
    if not scored:
        raise RuntimeError(f"run {run_dir}: no checkpoint with a validation score")
    best = max(scored, key=lambda r: r["score"])
    return load_checkpoint(Path(run_dir) / f"checkpoint_epoch{best['epoch']:03d}"), best
