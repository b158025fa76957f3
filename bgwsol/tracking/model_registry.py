"""Log a trained checkpoint to MLflow as a pyfunc, register it, and move the ``champion`` alias on improvement.

The logged model is our own module, not an exported graph: the pyfunc holds the run's
checkpoint file (:mod:`bgwsol.training.engine`'s layout, without optimizer state, with the
thresholds chosen on validation) as its data, and its loader module
(:mod:`bgwsol.serving.pyfunc`, named here, not imported) rebuilds the localizer from it.

A tracking server that does not answer is retried for a bounded time; then the checkpoint
that was to be registered is kept in a folder and :class:`RegistrationFailed` gives the
command that registers it later (:func:`register_checkpoint`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bgwsol.errors import UserError

log = logging.getLogger(__name__)

CHAMPION = "champion"
METRIC_TAG = "val_metric"
REGISTER_TIMEOUT_S = 120.0  # how long registration waits for a tracking server that does not answer, in all
KEEP_DIR = "unregistered"   # where a model that could not be registered is kept (under the working directory)


# the module that rebuilds the localizer from the logged checkpoint (named, not imported: serving
# loads registered models and depends on tracking, not the other way)
PYFUNC_LOADER = "bgwsol.serving.pyfunc"


@dataclass
class Registration:
    model_uri: str
    name: str
    version: int
    champion: bool
    metric: float


class RegistrationFailed(UserError, RuntimeError):
    """The model could not be registered in time; the message names the server, where the model's
    checkpoint is kept and the command that registers it later."""


def log_and_register(state: dict, *, tracking_uri: str, run_id: str, name: str, metric: float,
                     taus: dict[int, float], timeout_s: float = REGISTER_TIMEOUT_S,
                     keep_dir: str | Path | None = None, mask_tau: float | None = None) -> Registration:
    """Log ``state`` (a training checkpoint) with its operating thresholds ``taus`` (IoU percent
    -> τ, chosen on validation; ``mask_tau`` the mask threshold, where validation had masks) under
    MLflow run ``run_id``, register it as ``name`` and point
    ``champion`` at it only if ``metric`` (validation, higher is better) beats the current
    champion's.

    A server that does not answer is retried with backoff, each call given up on once the
    server stops answering /health, for ``timeout_s`` in all (a retry continues after the steps
    that went through). Then the checkpoint that was to be registered is written to ``keep_dir``
    (default ``unregistered/<name>-<run id>/`` under the working directory) and
    :class:`RegistrationFailed` says where it is and how to register it later. A request the
    server refuses raises at once, as MLflow's client raises it.
    """
    from bgwsol.checkpoint import inference_state, save_checkpoint
    from bgwsol.tracking.runs import Attempt, redact_url, refused, server_answers

    from bgwsol.retry import Backoff

    deadline = time.monotonic() + timeout_s
    backoff = Backoff(timeout_s, first_s=1.0, max_s=15.0)
    done: dict = {}  # the steps that went through: model_uri, version
    attempt = None
    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(inference_state(state, taus, mask_tau), d)
        while True:
            if not server_answers(tracking_uri):
                cause = "it does not answer /health"
            else:
                if attempt is None or attempt.finished.is_set():
                    # a call still in flight is waited for, not repeated: a second could register a second version
                    attempt = Attempt(lambda: _register(path, tracking_uri, run_id, name, metric, taus[50], done))
                if attempt.wait(tracking_uri, deadline) and attempt.error is None:
                    return attempt.value
                if attempt.finished.is_set() and (refused(attempt.error) or server_answers(tracking_uri)):
                    raise attempt.error
                cause = (f"{type(attempt.error).__name__}: {str(attempt.error)[:200]}" if attempt.finished.is_set()
                         else "no answer to its calls")
            if not backoff.wait():
                break
        kept = Path(keep_dir or Path(KEEP_DIR) / f"{name}-{run_id}").resolve()
        kept.mkdir(parents=True, exist_ok=True)
        kept = Path(shutil.copy2(path, kept / path.name))
    shown = redact_url(tracking_uri)
    command = (f"python -c \"from bgwsol.tracking.model_registry import register_checkpoint; register_checkpoint("
               f"'{kept}', tracking_uri='{shown}', run_id='{run_id}', name='{name}', metric={float(metric)!r})\"")
    in_flight = attempt is not None and not attempt.finished.is_set()
    raise RegistrationFailed(
        f"could not register {name}: MLflow server {shown} did not take it within {timeout_s:.0f} s ({cause}"
        + ("; the model was logged to the run" if "model_uri" in done else "")
        + (f", version {done['version']} registered, its alias not set" if "version" in done else "") + "). "
        f"The trained model is not lost: its checkpoint, with the thresholds chosen on validation, is kept at {kept} "
        f"(and the run's checkpoints stay in its storage). Register it once the server answers with: {command}"
        + (" (a call was still in flight when the time ran out: look for a new version of "
           f"{name} before registering again)" if in_flight else ""))


def register_checkpoint(path: str | Path, *, tracking_uri: str, name: str, metric: float, run_id: str | None = None,
                        timeout_s: float = REGISTER_TIMEOUT_S) -> Registration:
    """Register a checkpoint :func:`log_and_register` kept when it could not (it holds its
    thresholds, ``taus``) under its MLflow run (``run_id``, default the checkpoint's)."""
    from bgwsol.checkpoint import load_checkpoint

    path = Path(path)
    state = load_checkpoint(path)
    return log_and_register(state, tracking_uri=tracking_uri, run_id=run_id or state["mlflow_run_id"], name=name,
                            metric=metric, taus=state["taus"], timeout_s=timeout_s,
                            keep_dir=path if path.is_dir() else path.parent)


def _register(path: Path, tracking_uri: str, run_id: str, name: str, metric: float, tau: float,
              done: dict) -> Registration:
    """One try of :func:`log_and_register`'s calls, after those already in ``done``."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    if "model_uri" not in done:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", loader_module=PYFUNC_LOADER, data_path=str(path),
                                           pip_requirements=["torch", "torchvision", "pillow", "pandas"])
        done["model_uri"] = info.model_uri
    if "version" not in done:
        version = mlflow.register_model(done["model_uri"], name, tags={METRIC_TAG: str(metric), "tau": str(tau)})
        done["version"] = int(version.version)
    if "champion" not in done:
        client = MlflowClient(tracking_uri)
        champion = should_promote(client, name, metric)
        if champion:
            client.set_registered_model_alias(name, CHAMPION, str(done["version"]))
        done["champion"] = champion
    log.info("registered %s version %s (%s %.2f)%s", name, done["version"], METRIC_TAG, metric,
             " -> champion" if done["champion"] else "")
    return Registration(done["model_uri"], name, done["version"], done["champion"], metric)


def should_promote(client, name: str, metric: float) -> bool:
    """True if ``name`` has no champion yet or ``metric`` beats the champion's recorded metric."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return True
    return metric > float(current.tags.get(METRIC_TAG, "-inf"))
