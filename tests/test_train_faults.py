"""Faults injected into real Ray Train runs on a local Ray: an error of the training code ends
the run at once (one worker group, never restarted); a worker process killed mid-run is
restarted from the latest checkpoint and every epoch is trained exactly once."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from bgwsol.config import RunConfig, replace
from bgwsol.training.distributed import CHECKPOINT_FILE, ClusterConfig, TrainingCodeError, fit, lost_ranks
from bgwsol.data.plan import RunData

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def tiny(epochs: int = 2, **extra) -> RunConfig:
    return replace(RunConfig(), **{
        "data.input_size": 32, "data.bg_ratio": 0.25, "method.name": "cam", "train.epochs": epochs,
        "train.batch_size": 8, "train.log_every": 2, "model.backbone": "tiny", "eval.scoremap_size": 32,
        "eval.cam_curve_interval": 0.05, **extra})


def train_workers() -> list:
    import ray
    from ray.util.state import list_actors

    # this test's Ray by its address (another local Ray on the machine would make "auto" ambiguous)
    return list_actors(address=ray.get_runtime_context().gcs_address,
                       filters=[("class_name", "=", "RayTrainWorker")], limit=1000)


def test_an_error_of_the_training_code_fails_once_not_max_failures_times(shard_sets, tmp_path):
    from bgwsol.models.weights import WeightsError

    weights = tmp_path / "not_a_state_dict.pt"
    torch.save(torch.zeros(3), weights)  # passes the pre-flight check (the file exists); fails on the worker
    before = len(train_workers())
    cluster = ClusterConfig(num_workers=1, storage_path=str(tmp_path / "runs"), run_name="bad-weights",
                            max_failures=2)
    with pytest.raises(WeightsError, match="not a state dict"):
        fit(tiny(**{"model.weights": str(weights)}), RunData(*shard_sets), cluster)
    assert len(train_workers()) - before == 1  # one worker group of one worker: no restart


def test_a_bug_in_the_training_code_is_reported_with_its_traceback_and_not_retried():
    # what fit() raises for worker failures as Ray Train hands them over (no worker lost)
    from bgwsol.training.distributed import training_code_error

    err = training_code_error("run-x", {1: KeyError("val_tau50"), 0: ValueError("shapes differ")}, "Traceback ...")
    assert isinstance(err, TrainingCodeError)
    assert str(err).startswith("run run-x: the training code raised ValueError on rank 0: shapes differ")
    assert "Traceback ..." in str(err) and "not retried" in str(err)


def test_lost_ranks_are_dead_workers_only():
    import ray.exceptions

    assert lost_ranks({0: RuntimeError("gloo: connection closed"), 1: ray.exceptions.ActorDiedError()}) == [1]
    assert lost_ranks({0: ValueError("bug")}) == []


def test_a_killed_worker_restarts_from_the_latest_checkpoint(shard_sets, tmp_path):
    storage = tmp_path / "runs"
    cluster = ClusterConfig(num_workers=1, storage_path=str(storage), run_name="killed", max_failures=1)
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list((storage / "killed").glob(f"checkpoint_*/{CHECKPOINT_FILE}")):
                for actor in train_workers():
                    if actor.state == "ALIVE" and actor.pid:
                        os.kill(actor.pid, signal.SIGKILL)
                        killed.append(actor.pid)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    result = fit(tiny(epochs=4), RunData(*shard_sets), cluster)
    watcher.join(timeout=5)
    assert killed, "no worker was killed"
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    # resumed, not restarted: every epoch trained exactly once across the two worker groups
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2, 3]


def test_a_failed_health_check_counts_as_a_lost_worker():
    # the class Ray Train raises when a worker process died (not public: constructed here as Ray does)
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    import ray.exceptions

    assert lost_ranks({0: WorkerHealthCheckFailedError("A worker health check failed.",
                                                       ray.exceptions.ActorDiedError())}) == [0]


def test_a_checkpoint_waits_for_a_store_that_comes_back_and_fails_clearly_when_it_does_not(s3_endpoint, monkeypatch):
    """The probe RaySession.report runs before each checkpoint upload, against a real S3 endpoint
    that is down (nothing listens on its port) and comes up during the probe's first backoff wait
    (a moto server there), then against one that never comes back."""
    from conftest import free_port

    from bgwsol.data.storage import Location, StorageError, boto3_client, wait_until_writable

    boto3_client().create_bucket(Bucket="ckpt-outage")  # moto servers of one process share their buckets
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    started, waits = [], []

    def wait_then_come_back(seconds: float) -> None:
        # the store comes back only after a probe has failed (a timer could fire during pyarrow's own
        # retries of the first probe on a slow machine, which then succeeds without a wait)
        from moto.server import ThreadedMotoServer

        waits.append(seconds)
        time.sleep(seconds)
        if not started:
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            started.append(server)

    run_dir = Location.parse("s3://ckpt-outage/runs/r1")
    try:
        waited = wait_until_writable(run_dir, patience_s=60, first_delay_s=0.5, sleep=wait_then_come_back)
        left_behind = [o["Key"] for o in boto3_client().list_objects_v2(Bucket="ckpt-outage").get("Contents", [])]
    finally:
        for server in started:
            server.stop()
    assert waits == [0.5] and started and waited >= 0.5
    assert not [key for key in left_behind if "probe" in key]  # the probe object was deleted

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # never comes back
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://ckpt-outage/runs/r1: cannot reach the S3 endpoint .*still "
                                           r"unreachable after \d+ s of retries"):
        wait_until_writable(run_dir, patience_s=3, first_delay_s=0.5)
    assert time.monotonic() - t0 < 60  # bounded
