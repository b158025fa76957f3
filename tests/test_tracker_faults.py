"""The tracker goes away (issue #14, item 5): a real MLflow server stopped during a local training run.

Training goes on; what could not be logged goes to the run when the server is back (here during
training, restarted on the same port and store), or is left beside the checkpoints with the
command that logs it later; registration gives up in bounded time and keeps the model.
"""

import json
import logging
import re
import shutil
import time

import pytest
import torch

from bgwsol.config import RunConfig, replace
from bgwsol.tracking import run_logger, runs
from bgwsol.tracking.local_server import free_port, launch
from bgwsol.tracking.run_logger import RunLogger, replay_unlogged
from bgwsol.tracking.runs import TrackingConfig
from bgwsol.data.plan import RunData, plan_data
from bgwsol.training.local import fit_local

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

EPOCHS = 3


class Tracker:
    """A real MLflow server that a test stops and starts again on the same port and store."""

    def __init__(self, root):
        self.server = launch(root)
        self.root, self.port, self.url = root, self.server.port, self.server.url

    def stop(self) -> None:
        self.server.stop()

    def ready(self) -> str:
        if self.server.process.poll() is not None:
            self.server = launch(self.root, self.port)
        self.server.wait_ready()
        return self.url


@pytest.fixture(scope="session")
def tracker(tmp_path_factory):
    t = Tracker(tmp_path_factory.mktemp("tracker"))
    yield t
    t.stop()


@pytest.fixture(scope="module")
def plan(ray_local, tracker, shard_sets):
    # the server starts once Ray is up (both at once can overrun Ray's 30 s node start on 2 cores)
    # and migrates its new store while Ray shards the data
    tracker.ready()
    return plan_data(RunData(*shard_sets), False)


@pytest.fixture
def quick_probes(monkeypatch):
    # ask an away server every 0.5 s instead of 5: the test's outage lasts seconds, not minutes
    monkeypatch.setattr(runs, "PROBE_EVERY_S", 0.5)


def tiny_config(epochs: int = EPOCHS) -> RunConfig:
    return replace(RunConfig(), **{
        "data.input_size": 32, "method.name": "cam", "train.epochs": epochs, "train.batch_size": 8,
        "train.log_every": 2, "model.backbone": "tiny", "eval.scoremap_size": 32, "eval.cam_curve_interval": 0.05})


class Outage:
    """What the engine logs through: the real RunLogger, with ``on_epoch(epoch)`` run after each
    epoch's record is logged, and the time each call took while the server was away."""

    def __init__(self, logger: RunLogger, on_epoch):
        self.logger, self.on_epoch, self.away, self.slowest = logger, on_epoch, False, 0.0

    def _timed(self, fn, *args):
        t0 = time.monotonic()
        fn(*args)
        if self.away:
            self.slowest = max(self.slowest, time.monotonic() - t0)

    def log_metrics(self, metrics, step):
        self._timed(self.logger.log_metrics, metrics, step)
        if "train_loss" in metrics:  # the epoch's record (step = epoch)
            self.on_epoch(step)

    def log_artifact(self, path, artifact_path=None):
        self._timed(self.logger.log_artifact, path, artifact_path)


def expected_steps(plan) -> list[int]:
    from bgwsol.data.loader import TrainStream

    per_epoch = TrainStream.steps_for(plan.counts["train"], 1, 8, 0.25, False)
    return [s for s in range(1, EPOCHS * per_epoch + 1) if s % 2 == 0]


def assert_every_epoch_logged(client, run_id: str, plan) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("val_maxboxacc_v2", "train_loss", "images_per_s"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(EPOCHS)), key
    # once each: a call repeated after an outage keeps its timestamp, and MLflow keeps one row of it
    assert sorted(m.step for m in client.get_metric_history(run_id, "step/loss")) == expected_steps(plan)
    pictures = [f.path for f in client.list_artifacts(run_id, "overlays")]
    assert pictures == [f"overlays/overlays_epoch{e:03d}.png" for e in range(EPOCHS)]


def outage_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "unreachable" in r.getMessage()]


def test_training_goes_on_while_the_tracker_is_away_and_the_run_gets_every_epoch_when_it_is_back(
        plan, tracker, tmp_path, quick_probes, caplog):
    from mlflow import MlflowClient

    caplog.set_level(logging.INFO)
    url = tracker.ready()
    run_dir = tmp_path / "run"
    logger = RunLogger(TrackingConfig(url, "faults", flush_timeout_s=40), "restart", spool_dir=run_dir)
    run_id = logger.start(params={"method.name": "cam"})
    held_after_restart = []

    def on_epoch(epoch: int) -> None:
        if epoch == 0:  # the server stops after the first epoch
            tracker.stop()
            outage.away = True
        elif epoch == 1:  # held, not lost, and kept beside the checkpoints meanwhile
            assert logger.held > 0 and logger.unlogged_file.parent == run_dir and logger.unlogged_file.exists()
            outage.away = False
            tracker.ready()  # back on the same port and store
        else:
            held_after_restart.append(logger.held)

    outage = Outage(logger, on_epoch)
    fit_local(tiny_config(), plan, run_dir, outage)
    assert outage.slowest < 5.0  # a call waits about a second for an away server, not MLflow's minutes of retries
    assert held_after_restart == [0]  # logged once the server answered, while training went on
    assert logger.end() is None
    assert_every_epoch_logged(MlflowClient(url), run_id, plan)
    run = MlflowClient(url).get_run(run_id)
    assert int(run.data.tags[run_logger.LATE_TAG]) >= 3  # the run says it got records late
    assert not list(run_dir.glob("unlogged_*"))
    assert len(outage_warnings(caplog)) == 1  # one line for the outage, nothing per call
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_a_tracker_that_never_comes_back_leaves_what_was_not_logged_beside_the_checkpoints(
        plan, tracker, tmp_path, quick_probes, caplog):
    from mlflow import MlflowClient

    from bgwsol.checkpoint import load_checkpoint

    caplog.set_level(logging.INFO)
    url = tracker.ready()
    run_dir = tmp_path / "run"
    logger = RunLogger(TrackingConfig(url, "faults", flush_timeout_s=3), "gone", spool_dir=run_dir)
    run_id = logger.start()

    def on_epoch(epoch: int) -> None:
        if epoch == 0:
            tracker.stop()
            outage.away = True

    outage = Outage(logger, on_epoch)
    fit_local(tiny_config(), plan, run_dir, outage)
    assert outage.slowest < 5.0
    t0 = time.monotonic()
    path = logger.end()
    assert time.monotonic() - t0 < 3 + 5  # the bounded wait, not MLflow's retries

    # training completed: every epoch's checkpoint, intact
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch*")) == [f"checkpoint_epoch{e:03d}" for e in range(3)]
    assert load_checkpoint(run_dir / "checkpoint_epoch002")["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    # the file beside them names what is missing
    assert path == run_dir / f"unlogged_{run_id}.json"
    doc = json.loads(path.read_text())
    assert doc["run_id"] == run_id and doc["tracking_uri"] == url and "replay_unlogged" in doc["log_later"]
    # the command it gives imports what it names (python -c "from <module> import replay_unlogged; ...")
    module = doc["log_later"].split("from ", 1)[1].split(" import ", 1)[0]
    assert getattr(__import__(module, fromlist=["replay_unlogged"]), "replay_unlogged") is replay_unlogged
    assert doc["missing"]["metrics"]["val_maxboxacc_v2"] == [1, 2]
    assert doc["missing"]["artifacts"] == ["overlays/overlays_epoch001.png", "overlays/overlays_epoch002.png"]
    assert doc["missing"]["status"] == "FINISHED"
    copies = [run_dir / r["file"] for r in doc["records"] if r["kind"] == "artifact"]
    assert len(copies) == 2 and all(p.is_file() for p in copies)
    assert len(outage_warnings(caplog)) == 1
    end_line = [m for m in (r.getMessage() for r in caplog.records) if str(path) in m and "not logged" in m]
    assert len(end_line) == 1 and "overlays/overlays_epoch002.png" in end_line[0] and "replay_unlogged" in end_line[0]

    # the server is back later. A rerun that continues the run (same spool folder) logs the file
    # first; the command in the file logs it all; the two together still log each record once
    tracker.ready()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy2(path, resumed_dir / path.name)
    shutil.copytree(path.with_suffix(""), resumed_dir / path.stem)
    resumed = RunLogger(TrackingConfig(url, "faults", flush_timeout_s=3), "gone", run_id=run_id, spool_dir=resumed_dir)
    resumed.start()
    assert resumed.held == 0 and resumed.end() is None and not (resumed_dir / path.name).exists()
    assert replay_unlogged(path) == len(doc["records"])
    client = MlflowClient(url)
    assert_every_epoch_logged(client, run_id, plan)
    assert client.get_run(run_id).data.tags[run_logger.UNLOGGED_TAG] == "0"
    assert not path.exists() and path.with_name(f"{path.stem}.replayed.json").exists()


def test_registration_with_the_tracker_away_fails_in_bounded_time_and_keeps_the_model(tracker, tmp_path):
    from mlflow import MlflowClient

    from bgwsol.checkpoint import load_checkpoint
    from bgwsol.tracking.model_registry import RegistrationFailed, log_and_register

    url = tracker.ready()
    client = MlflowClient(url)
    run_id = client.create_run(client.create_experiment("faults-registry")).info.run_id
    state = {"model": {"w": torch.zeros(2)}, "config": {}, "classes": ["a"], "mlflow_run_id": run_id,
             "optimizer": {}, "history": []}
    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(RegistrationFailed) as failed:
        log_and_register(state, tracking_uri=away, run_id=run_id, name="bgwsol-faults", metric=55.0,
                         taus={30: 0.2, 50: 0.4, 70: 0.6}, timeout_s=4, keep_dir=tmp_path / "kept")
    assert time.monotonic() - t0 < 4 + 6
    message = str(failed.value)
    kept = tmp_path / "kept" / "checkpoint.pt"
    assert away in message and str(kept) in message and "not lost" in message
    assert "\n" not in message  # a UserError: entry points print its first line only, command included
    saved = load_checkpoint(kept)  # what was to be registered: no optimizer, the thresholds chosen on validation
    assert saved["taus"] == {30: 0.2, 50: 0.4, 70: 0.6} and "optimizer" not in saved

    # once a server answers, the command in the message registers it
    code = re.search(r'python -c "(.+)"', message).group(1)
    exec(code.replace(away, url), {})  # noqa: S102 - the message's own command, pointed at the live server
    version = client.get_model_version_by_alias("bgwsol-faults", "champion")
    assert version.run_id == run_id and version.tags["tau"] == "0.4"


def test_two_trials_recording_the_same_shard_set_at_once_both_get_it():
    """MLflow's SQL store creates a dataset row for the first of two runs that log the same shard
    set at once and refuses the second's insert (UNIQUE constraint; seen in CI with two Tune
    trials): the second try links the row that now exists. Other refusals are not retried."""
    from mlflow.exceptions import MlflowException

    from bgwsol.tracking.run_logger import _deliver

    class Store:  # stands in for the client: the first call loses the race, as the second trial did in CI
        def __init__(self, error: str):
            self.calls, self.error = 0, error

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.calls == 1:
                raise MlflowException(self.error)

    data = {"datasets": [{"name": "ilsvrc-shards", "digest": "a" * 36, "source_type": "local", "url": "/s",
                          "context": "training"}]}
    raced = Store("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
                  "datasets.digest")
    _deliver(raced, "run", "inputs", data)
    assert raced.calls == 2
    refused = Store("RESOURCE_DOES_NOT_EXIST: run 'run' not found")
    with pytest.raises(MlflowException, match="not found"):
        _deliver(refused, "run", "inputs", data)
    assert refused.calls == 1
