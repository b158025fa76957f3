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


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be used; the message names it (without credentials) and the cause."""


def redact_url(url: str) -> str:
    """``url`` with any password in its user-info replaced by ``***`` (safe for logs, params and files)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def check_tracking(cfg: TrackingConfig, timeout_s: float = 10.0) -> str:
    """Prove the tracking URI is usable before any training starts; returns it ('' when tracking is off).

    For an ``http(s)`` server: ``/health`` must answer, and the experiment lookup must not be
    refused (wrong ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or token).
    Raises :class:`TrackingUnavailable` with the (redacted) URI and the cause.
    """
    import requests

    uri = resolve_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return uri
    base, shown = uri.rstrip("/"), redact_url(uri)
    try:
        health = requests.get(f"{base}/health", timeout=timeout_s)
    except requests.RequestException as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {shown} is unreachable ({type(exc).__name__}): start it, or fix "
            f"--tracking.tracking_uri / MLFLOW_TRACKING_URI; nothing was trained") from None
    if not health.ok:
        raise TrackingUnavailable(f"MLflow tracking server {shown} answered /health with HTTP {health.status_code}")
    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    headers = {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"} \
        if os.environ.get("MLFLOW_TRACKING_TOKEN") else {}
    resp = requests.get(f"{base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": cfg.experiment},
                        auth=auth, headers=headers, timeout=timeout_s)
    if resp.status_code in (401, 403):
        raise TrackingUnavailable(
            f"MLflow tracking server {shown} refused the credentials (HTTP {resp.status_code}): set "
            f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN); nothing was trained")
    if resp.status_code >= 500:
        raise TrackingUnavailable(f"MLflow tracking server {shown} failed the experiment lookup (HTTP "
                                  f"{resp.status_code}): see the server's log")
    return uri


def git_state(root: str | Path | None = None) -> dict[str, str]:
    """``{"git_sha": ..., "git_dirty": "true"|"false"}`` of the code.

    Outside a checkout (``ray job submit --working-dir`` uploads no ``.git``) it takes
    ``BGWSOL_GIT_SHA`` / ``BGWSOL_GIT_DIRTY`` from the environment (pass them with the job's
    ``--runtime-env-json``), else ``unknown``.
    """
    root = Path(root or Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"git_sha": sha, "git_dirty": "true" if dirty else "false"}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": os.environ.get("BGWSOL_GIT_SHA", "unknown"),
                "git_dirty": os.environ.get("BGWSOL_GIT_DIRTY", "unknown")}


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
