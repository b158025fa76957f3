"""MLflow tracking: where it is (its config, a check before any work), provenance, and the calls
to a server that may go away.

Only rank 0 of a run logs. Everything goes through an explicit :class:`mlflow.MlflowClient`
(no fluent global state), so a resumed Ray Train worker continues the same MLflow run by its
id (kept in the checkpoint).

A tracking server that goes away does not stop training: each call to it runs as an
:class:`Attempt` its caller can stop waiting for, and :class:`bgwsol.tracking.run_logger.RunLogger`
holds and replays what a run could not log.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bgwsol.config import option
from bgwsol.errors import UserError, one_line

log = logging.getLogger(__name__)


@dataclass
class TrackingConfig:
    """Where and how runs are tracked."""

    tracking_uri: str = option("", "MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, a folder); "
                                    "empty: MLFLOW_TRACKING_URI, else no tracking")
    experiment: str = option("bgwsol", "MLflow experiment name")
    flush_timeout_s: float = option(60.0, "at a run's end (and to open it), how long to wait for an MLflow server "
                                          "that went away before leaving what it could not log in a file")


def resolve_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")


def runs_view_path(tracking_uri: str, experiment: str) -> str:
    """``#/experiments/<id>/runs``: the training-runs table of ``experiment`` in the MLflow UI
    (``#/experiments/<id>`` alone opens MLflow 3's GenAI overview of traces in a fresh browser);
    "" when the server does not know the experiment or cannot be asked."""
    from mlflow import MlflowClient

    try:
        found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - a link is a courtesy: no link rather than a failed job
        return ""
    return f"#/experiments/{found.experiment_id}/runs" if found is not None else ""


class TrackingUnavailable(UserError, RuntimeError):
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


# ----------------------------------------------------------------------------- a server that goes away

# MLflow's client retries a server that does not answer with exponential backoff for minutes
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES 7, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR 2: about 4 min per call,
# each try up to MLFLOW_HTTP_REQUEST_TIMEOUT 120 s). It reads those from the environment on every
# request, for every client of the process: there is no per-client setting, and a library does not
# change os.environ under its caller. So each call runs in a daemon thread that the caller stops
# waiting for as soon as the server's /health stops answering (one short request, no retries).
PROBE_AFTER_S = 1.0           # a call still running after this long makes the caller ask /health
PROBE_EVERY_S = 5.0           # ... again this often while it runs; and how often a server that went away is asked
PROBE_TIMEOUT_S = (2.0, 5.0)  # connect, read: a host that drops packets counts as away after 2 s
SLOW_CALL_S = 120.0           # how long a call may take while the server does answer /health (a large artifact)
CALL_THREAD = "bgwsol-mlflow-call"


def server_answers(uri: str) -> bool:
    """True if the tracking server at ``uri`` answers ``/health`` now (one short request, no
    retries); always True for a URI that is not a server (sqlite, a folder)."""
    if not uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).ok
    except requests.RequestException:
        return False


class _QuietCallThreads(logging.Filter):
    """urllib3 warns once per retry (``Retrying (Retry(total=6, ...))``): from a call thread that
    is every few seconds of an outage, which :class:`~bgwsol.tracking.run_logger.RunLogger` reports once itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.threadName.startswith(CALL_THREAD)


_QUIET = _QuietCallThreads()


class Attempt:
    """One call in a daemon thread, so that its caller can stop waiting while MLflow's client retries."""

    def __init__(self, fn: Callable[[], Any]):
        logging.getLogger("urllib3.connectionpool").addFilter(_QUIET)  # once: addFilter skips a filter it holds
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(fn,), name=CALL_THREAD, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, in its thread
            self.error = exc
        finally:
            self.finished.set()

    @property
    def succeeded(self) -> bool:
        return self.finished.is_set() and self.error is None

    def wait(self, uri: str, until: float) -> bool:
        """True once the call has finished (see :attr:`error`); False as soon as the server at
        ``uri`` stops answering /health, or at ``until`` (``time.monotonic()``): the thread goes on."""
        if self.finished.wait(max(0.0, min(PROBE_AFTER_S, until - time.monotonic()))):
            return True
        while time.monotonic() < until and server_answers(uri):
            if self.finished.wait(max(0.0, min(PROBE_EVERY_S, until - time.monotonic()))):
                return True
        return self.finished.is_set()


def refused(exc: BaseException) -> bool:
    """The server answered with an error (it refuses the request): not a server that went away."""
    from mlflow.exceptions import RestException

    return isinstance(exc, RestException)


def attach_file(tracking_uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> bool:
    """Log file ``path`` to the existing (possibly finished) run ``run_id``; returns False, with a
    warning naming the file, when the server does not take it (the file stays where it is)."""
    if not tracking_uri or not run_id:
        return False
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).log_artifact(run_id, str(path), artifact_path)
        return True
    except Exception as exc:  # the report is on disk either way
        log.warning("%s was not logged to MLflow run %s (%s); it is on disk", path, run_id, one_line(exc))
        return False
