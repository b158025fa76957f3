"""MLflow tracking for training runs: params, per-term losses, epoch metrics, pictures, provenance.

Only rank 0 of a run logs. Everything goes through an explicit :class:`mlflow.MlflowClient`
(no fluent global state), so a resumed Ray Train worker continues the same MLflow run by its
id (kept in the checkpoint).
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bgwsol.config import option

log = logging.getLogger(__name__)


@dataclass
class TrackingConfig:
    """Where and how runs are tracked."""

    tracking_uri: str = option("", "MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, a folder); "
                                    "empty: MLFLOW_TRACKING_URI, else no tracking")
    experiment: str = option("bgwsol", "MLflow experiment name")


def resolve_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")


def git_state(root: str | Path | None = None) -> dict[str, str]:
    """``{"git_sha": ..., "git_dirty": "true"|"false"}`` of the code, or ``unknown`` outside a checkout."""
    root = Path(root or Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"git_sha": sha, "git_dirty": "true" if dirty else "false"}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": "unknown"}


class RunLogger:
    """One MLflow run: ``start`` (or continue by id), log, ``end``. A no-op when no URI is set."""

    def __init__(self, cfg: TrackingConfig, run_name: str, run_id: str | None = None, parent_run_id: str | None = None):
        self.uri = resolve_uri(cfg)
        self.cfg, self.run_name, self.run_id, self.parent_run_id = cfg, run_name, run_id, parent_run_id
        self.client = None

    @property
    def enabled(self) -> bool:
        return bool(self.uri)

    def start(self, params: dict | None = None, tags: dict | None = None) -> str | None:
        """Create the run (or reopen ``run_id``); returns its id."""
        if not self.enabled:
            return None
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.cfg.experiment)
        all_tags = {"mlflow.runName": self.run_name, **(tags or {})}
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=self.run_name).info.run_id
        if params:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.client:
            return
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.client:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.client:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        if self.client:
            self.client.set_terminated(self.run_id, status=status)
