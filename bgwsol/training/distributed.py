"""Ray Train V2: the engine on each worker of a DDP group, and the driver calls that run it.

:func:`fit` runs :func:`bgwsol.training.engine.train` on ``num_workers`` Ray Train workers
(DDP: nccl on GPU, gloo on CPU). Each streams its own batches from the shard set, evaluates
its part of the validation split, and the ranks' accumulators are merged. Rank 0 reports
a checkpoint per epoch through ``ray.train.report`` to the run's storage (a local folder or
``s3://``). A restarted worker group (``FailureConfig(max_failures)``) or a rerun with the
same run name resumes from the latest checkpoint. Training only produces checkpoints: scoring
one is :mod:`bgwsol.evaluation` (:func:`bgwsol.evaluation.on_ray.score_on_workers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass

from bgwsol.config import RunConfig, option, replace, to_dict
from bgwsol.errors import UserError, one_line
from bgwsol.checkpoint import CHECKPOINT_FILE  # noqa: F401 - the file name, for callers of this module
from bgwsol.data.plan import DataPlan, RunData

log = logging.getLogger(__name__)

RUN_FILE = "bgwsol_run.json"  # beside Ray Train's own files: what the run trains, written at its first start

# settings a rerun of the same run name may change: the schedule's length, evaluation and logging
RESUMABLE = ("train.epochs", "train.eval_every", "train.log_every", "eval.")


class IncompatibleRun(UserError, RuntimeError):
    """A run name whose checkpoints were trained with another model, method, data or schedule."""


def run_identity(cfg: RunConfig, digest: str, background: str = "") -> dict:
    """What a run's checkpoints depend on: the config without :data:`RESUMABLE` keys, and the data
    (``digest``: the dataset manifest's SHA-256; ``background``: the background set's, for a
    method that trains on one)."""
    from bgwsol.config import flatten

    flat = {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith(RESUMABLE)}
    return {"config": flat, "manifest": digest, **({"background": background} if background else {})}


def identity_tag(cfg: RunConfig, digest: str, background: str = "") -> str:
    """8 hex digits of :func:`run_identity`: a run name with it continues only the same training."""
    import hashlib
    import json

    blob = json.dumps(run_identity(cfg, digest, background), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def run_name_of(cfg: RunConfig, digest: str, background: str = "") -> str:
    """The one name of a training run: ``<method>-seed<seed>-<identity tag>`` (``digest`` and
    ``background``: the manifests it reads). A rerun of the same training continues it; a changed
    configuration or data gets a new name instead of being refused. Tune's trials are
    ``<search>-<trial id>``."""
    return f"{cfg.method.name}-seed{cfg.train.seed}-{identity_tag(cfg, digest, background)}"


def claim_run(run_dir, cfg: RunConfig, digest: str, background: str = "") -> bool:
    """Record the run's identity at its first start; on a rerun, refuse a different one.

    ``run_dir`` is a :class:`~bgwsol.data.storage.Location` (local or ``s3://``). Returns True
    when the run existed (a rerun continues it). Raises :class:`IncompatibleRun` naming the
    shard set or the settings that differ, before any worker starts.
    """
    import json

    mine = run_identity(cfg, digest, background)
    marker = run_dir.join(RUN_FILE)
    if not marker.exists():
        marker.write_bytes(json.dumps(mine, indent=1, sort_keys=True, default=str).encode())
        return False
    theirs = json.loads(marker.read_bytes())
    if theirs["manifest"] != mine["manifest"]:
        raise IncompatibleRun(f"{run_dir.url} was trained on shard set {theirs['manifest'][:12]}, this run reads "
                              f"{digest[:12]}: give this run a new name (--cluster.run_name)")
    if theirs.get("background", "") != background and theirs.get("background") and background:
        raise IncompatibleRun(f"{run_dir.url} was trained with background shard set {theirs['background'][:12]}, this "
                              f"run reads {background[:12]}: give this run a new name (--cluster.run_name)")
    old, new = theirs["config"], json.loads(json.dumps(mine["config"], default=str))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise IncompatibleRun(f"{run_dir.url} holds checkpoints of another configuration ({shown}"
                              f"{'; ...' if len(diff) > 6 else ''}): give this run a new name (--cluster.run_name) "
                              f"or restore those settings; only {', '.join(RESUMABLE)} may change on a rerun")
    return True


@dataclass
class ClusterConfig:
    """How a run uses the Ray cluster."""

    num_workers: int = option(2, "Ray Train workers (one DDP rank each)")
    use_gpu: bool = option(False, "one GPU per worker (AMP bf16 + channels_last, nccl)")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (also its torch threads)")
    storage_path: str = option("runs/ray", "where Ray Train keeps checkpoints: a local folder or s3://bucket/prefix")
    run_name: str = option("", "Ray Train run name; rerunning the same name resumes it (empty: <method>-seed<seed>-<hash of the config and the data>)")
    max_failures: int = option(2, "restarts from the latest checkpoint after a lost worker or node, before the run "
                                  "fails (an error raised by the training code itself is never retried)")
    storage_patience_s: float = option(300.0, "how long a checkpoint upload retries an unreachable store (with "
                                              "backoff) before the run fails")
    loader_workers: int = option(0, "DataLoader processes per worker")
    resource_wait_s: float = option(900.0, "how long the job may wait for the cluster's CPUs/GPUs (a run's worker "
                                           "group, a task) before it stops in one line; a line says what it waits "
                                           "for after 60 s; 0: wait forever (clusters that scale up)")


@dataclass
class WorkerJob:
    """What every Ray Train worker of a run receives (typed, pickled by Ray)."""

    cfg: RunConfig
    plan: DataPlan
    cluster: "ClusterConfig"
    run_name: str
    tracking: object = None             # TrackingConfig, or None: no tracking
    parent_run_id: str | None = None
    submitted_at: float = 0.0           # time.time() when the driver handed the run to Ray Train


class TrainingCodeError(RuntimeError):
    """The training code raised on a worker (no worker was lost): it would fail the same way
    again, so the run ends at once. The message holds the worker's traceback."""


class RaySession:
    """A :class:`~bgwsol.training.engine.Session` over Ray Train's checkpoints and reports.

    ``run_dir`` (a :class:`~bgwsol.data.storage.Location`) is where the checkpoints go; before a
    checkpoint is handed to Ray Train the store must accept a write, retried with backoff for
    ``patience_s`` (an outage of the store shorter than that costs a wait, not the run).
    """

    def __init__(self, run_dir=None, patience_s: float = 0.0):
        self.run_dir, self.patience_s = run_dir, patience_s

    def latest_state(self) -> dict | None:
        import ray.train

        from bgwsol.checkpoint import load_checkpoint

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as d:
            return load_checkpoint(d)

    def report(self, record: dict, state: dict | None) -> None:
        import ray.train

        from bgwsol.checkpoint import save_checkpoint

        if state is None:
            ray.train.report(record)
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(state, d)
            if self.run_dir is not None:
                from bgwsol.data.storage import wait_until_writable

                waited = wait_until_writable(self.run_dir, self.patience_s)
                if waited:
                    log.warning("%s answered again after %.0f s; uploading the checkpoint of epoch %d",
                                self.run_dir.url, waited, state["epoch"])
            ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))


def _run_logger(job: WorkerJob):
    """Rank 0's MLflow run (None without tracking): opened once the engine knows whether it resumes."""
    from bgwsol.tracking.run_logger import RunLogger

    from bgwsol.data.storage import Location

    if job.tracking is None:
        return None
    run_dir = Location.parse(job.cluster.storage_path).join(job.run_name)
    # what a tracking server that went away could not take is kept beside the run's checkpoints
    # (a local storage path; with s3:// storage, in a temporary folder on the worker)
    return RunLogger(job.tracking, job.run_name, parent_run_id=job.parent_run_id,
                     spool_dir=None if run_dir.is_s3 else run_dir.fs_path)


def _tracking_start(job: WorkerJob, logger):
    """``on_start`` for the engine: continue the checkpoint's MLflow run, or open one with the params."""
    from bgwsol.config import flatten
    from bgwsol.tracking.runs import git_state

    def start(training) -> None:
        logger.run_id = training.mlflow_run_id
        training.mlflow_run_id = logger.start(
            params={**flatten(to_dict(job.cfg)), **{f"cluster.{k}": v for k, v in to_dict(job.cluster).items()}},
            tags={**git_state(), "dataset_manifest_sha256": job.plan.digest, "dataset": job.plan.dataset})
        if training.start_epoch == 0:
            logger.log_inputs(job.plan.inputs())

    return start


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry point: ``config["job"]`` is the run's :class:`WorkerJob`."""
    import ray.train
    import ray.train.torch
    import torch

    from bgwsol.data.plan import Worker
    from bgwsol.training.engine import train

    job: WorkerJob = config["job"]
    startup = worker_startup(job.submitted_at)
    ctx = ray.train.get_context()
    if ctx.get_world_rank() == 0:
        from bgwsol.training.cluster_resources import note_placement_group

        note_placement_group(job.run_name)
    torch.set_num_threads(max(1, int(job.cluster.cpus_per_worker)))
    worker = Worker(ctx.get_world_rank(), ctx.get_world_size(), str(ray.train.torch.get_device()),
                    job.cluster.loader_workers)
    logger = _run_logger(job) if worker.rank == 0 else None
    on_start = _tracking_start(job, logger) if logger is not None and logger.enabled else None
    from bgwsol.data.storage import Location

    session = RaySession(Location.parse(job.cluster.storage_path).join(job.run_name), job.cluster.storage_patience_s)
    from bgwsol.progress import ProgressSender

    progress = (ProgressSender(job.run_name, job.cfg.train.epochs, job.cfg.eval.select_metric)
                if worker.rank == 0 else None)
    train(job.cfg, job.plan, worker, session, logger if on_start else None, on_start, progress, startup)
    if on_start is not None:
        logger.end()


def worker_startup(submitted_at: float) -> dict[str, float]:
    """Seconds before this worker's training loop, for the first epoch's record:
    ``startup_worker_group_s`` (the driver's ``fit`` to this process's creation: placement group,
    process spawn) and ``startup_process_s`` (this process's creation to its training loop:
    Python and torch imports, Ray Train's set-up, the DDP process group)."""
    import time

    import psutil  # Ray's vendored copy

    created = psutil.Process().create_time()
    now = time.time()
    out = {"startup_process_s": now - created}
    if submitted_at:
        out["startup_worker_group_s"] = max(0.0, created - submitted_at)
    return out


def fit(cfg: RunConfig, data: RunData, cluster: ClusterConfig, tracking=None, callbacks: list | None = None,
        parent_run_id: str | None = None):
    """Run (or resume) a TorchTrainer for ``cfg`` on ``data``; returns Ray Train's ``Result``.

    Checkpoints go to ``<storage_path>/<run_name>/``; keeps every epoch's checkpoint and the
    best by validation ``select_metric``. What cannot work is refused here, before any worker
    starts (a restart would only repeat the failure): the storage, the tracking server, a run
    name holding another training, the shard sets.

    Failures: a lost worker or node restarts the worker group from the latest checkpoint, up to
    ``cluster.max_failures`` times; an exception raised by the training code itself ends the
    run at once (a :class:`~bgwsol.errors.UserError` as itself, anything else as
    :class:`TrainingCodeError` with the worker's traceback). Ray Train's own retry counts both
    alike, so it is set to 0 and the restart is decided here.
    """
    import ray.train

    from bgwsol.data.storage import check_access
    from bgwsol.methods import build_method
    from bgwsol.training.cluster_resources import controller_note, note_run_started
    from bgwsol.tracking.runs import check_tracking
    from bgwsol.data.plan import plan_data

    loc = check_access(cluster.storage_path, writable=True)
    if tracking is not None:
        check_tracking(tracking)
    plan = plan_data(data, build_method(cfg.method).uses_background)
    name = cluster.run_name or run_name_of(cfg, plan.digest, plan.background_digest)
    if claim_run(loc.join(name), cfg, plan.digest, plan.background_digest):
        log.info("run %s exists under %s: continuing from its latest checkpoint", name, loc.url)
    run_config = ray.train.RunConfig(
        name=name, storage_path=loc.fs_path, storage_filesystem=loc.filesystem(),
        failure_config=ray.train.FailureConfig(max_failures=0),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=None, checkpoint_score_attribute="best_score", checkpoint_score_order="max"),
        callbacks=[controller_note(), *(callbacks or [])])
    # workers run elsewhere (another folder, another node): they get the storage path made absolute
    job = WorkerJob(cfg, plan, replace(cluster, storage_path=loc.url), name, tracking, parent_run_id)
    note_run_started(name)  # the job's resource watch names this run while it waits for its worker group
    interrupted = False
    try:
        return _fit_with_restarts(job, run_config, cluster, name)
    except KeyboardInterrupt:  # the job is stopping: its Ray goes with it, nothing to release one by one
        interrupted = True
        raise
    except Exception as error:
        _clear_frames(error)
        raise
    finally:
        if not interrupted:
            _release(name)


@contextlib.contextmanager
def _sigint_kept():
    """Restore the SIGINT handler after ``TorchTrainer.fit``: on the main thread Ray Train
    installs one that aborts *this* run's controller and keeps its handle; left in place after
    the run it kept the finished controller alive, and a later Ctrl-C (during the Tune search)
    called ``abort`` on a dead actor, which made the job exit with status 0."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _clear_frames(error: BaseException) -> None:
    """Clear the local variables of the finished frames in ``error``'s tracebacks (the lines
    stay): Ray Train's frames hold the handle of the run's controller, and an exception kept by
    a caller (a test's ``pytest.raises``, a retry loop) would keep that idle controller alive."""
    import traceback

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _release(name: str) -> None:
    """After ``fit``: the run's placement groups must be gone (a line on the console if they
    were not), and the finished controller is let go."""
    from bgwsol.training.cluster_resources import release_run

    try:
        release_run(name, grace_s=10.0, controller_finished=True)
    except Exception as error:  # the state API unreachable: the job's own watch and Ray's cleanup remain
        log.debug("release of run %s: %s", name, error)


def _fit_with_restarts(job: WorkerJob, run_config, cluster: ClusterConfig, name: str):
    """``TorchTrainer.fit`` for ``job``, restarted after a lost worker (see :func:`fit`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    restarts = 0
    while True:
        job = dataclasses.replace(job, submitted_at=time.time())  # each (re)start of the worker group is timed
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config={"job": job},
            scaling_config=ray.train.ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                                   resources_per_worker={"CPU": cluster.cpus_per_worker}),
            run_config=run_config)
        try:
            with _sigint_kept():
                return trainer.fit()
        except ray.train.WorkerGroupError as exc:
            lost = lost_ranks(exc.worker_failures)
            if not lost:
                raise training_code_error(name, exc.worker_failures, str(exc)) from None
            if 0 <= cluster.max_failures <= restarts:
                raise
            restarts += 1
            log.warning("run %s: worker rank(s) %s lost (%s); restarting from the latest checkpoint (restart %d of "
                        "%s)", name, lost, one_line(exc.worker_failures[lost[0]]), restarts,
                        "unlimited" if cluster.max_failures < 0 else cluster.max_failures)


def is_lost_worker(error: BaseException) -> bool:
    """Whether Ray reports a worker process or node gone: an actor or node death, or a failed or
    timed-out Ray Train health check (``WorkerHealthCheck*Error``, which Ray Train raises when a
    worker process died; its classes are not public, hence the name test). Exceptions of the
    training code reach :func:`fit` as themselves, unwrapped by Ray Train."""
    import ray.exceptions

    if isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError)):
        return True
    kind = type(error)
    return kind.__module__.startswith("ray.train") and kind.__name__.startswith("WorkerHealthCheck")


def lost_ranks(worker_failures: dict[int, BaseException]) -> list[int]:
    """Ranks whose worker process or node died (the others' errors are then collateral: a
    collective whose peer vanished), as opposed to ranks whose training code raised."""
    return sorted(r for r, e in worker_failures.items() if is_lost_worker(e))


def training_code_error(name: str, worker_failures: dict[int, BaseException], details: str) -> Exception:
    """What :func:`fit` raises when the training code failed: the worker's own exception when it is
    a :class:`~bgwsol.errors.UserError` (one line for the user), else :class:`TrainingCodeError`."""
    from bgwsol.errors import is_user_error

    rank = min(worker_failures)
    first = worker_failures[rank]
    if is_user_error(first):
        return first
    return TrainingCodeError(f"run {name}: the training code raised {type(first).__name__} on rank {rank}: "
                             f"{one_line(first)} (not retried: it would fail the same way)\n{details}")


def best_checkpoint(result) -> tuple[dict, dict]:
    """``(state, metrics)`` of the reported checkpoint with the highest validation score."""
    from bgwsol.checkpoint import load_checkpoint

    candidates = [(ckpt, m) for ckpt, m in (result.best_checkpoints or []) if m.get("score", -1) >= 0]
    if not candidates:
        raise RuntimeError(f"run {result.path}: no checkpoint with a validation score")
    ckpt, metrics = max(candidates, key=lambda cm: cm[1]["score"])
    with ckpt.as_directory() as d:
        state = load_checkpoint(d)
    return state, metrics


def run_history(result) -> list[dict]:
    """Every epoch record of a finished Ray Train run (its latest checkpoint's history; the best
    checkpoint's stops at the best epoch)."""
    from bgwsol.checkpoint import load_checkpoint

    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        return list(load_checkpoint(d).get("history", []))


def load_result(storage_path: str, run_name: str):
    """The Ray Train ``Result`` of the run ``run_name`` under ``storage_path`` (local or ``s3://``)."""
    import ray.train

    from bgwsol.data.storage import Location

    loc = Location.parse(storage_path).join(run_name)
    return ray.train.Result.from_path(loc.fs_path, storage_filesystem=loc.filesystem())
