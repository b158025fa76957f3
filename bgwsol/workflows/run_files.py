"""A finished run's files for people, beside the comparison's table: ``config.yaml``,
``history.jsonl``, ``results.json`` and ``overlays_test.png``."""

from __future__ import annotations

import json
from pathlib import Path

from bgwsol.config import RunConfig
from bgwsol.evaluation.scoring import FinalEvaluation


def write_run_files(directory: str | Path, cfg: RunConfig, state: dict, final: FinalEvaluation,
                    picture=None) -> Path:
    """A finished run's files for people: ``config.yaml``, ``history.jsonl`` (one line per
    epoch), ``results.json`` (validation, thresholds chosen there, test) and, given,
    ``overlays_test.png``."""
    from bgwsol.config import write_yaml

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(cfg, out / "config.yaml")
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state.get("history", [])))
    (out / "results.json").write_text(json.dumps({
        "method": cfg.method.name, "best_epoch": state.get("epoch"), **final.to_json()}, indent=2))
    if picture is not None:
        picture.save(out / "overlays_test.png")
    return out
