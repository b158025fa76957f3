"""Ray Train V2 on CPU: 2 DDP workers over shards, checkpoints, resume by name, refusals, damaged shards,
MLflow logging, the registry and Tune. (A node lost mid-run: tests/test_cluster_jobs.py.)"""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from bgwsol.config import RunConfig, replace
from bgwsol.training.distributed import CHECKPOINT_FILE, ClusterConfig, fit
from bgwsol.data.plan import RunData

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def tiny_config(shard_sets, method: str = "bgwsol", epochs: int = 2) -> RunConfig:
    return replace(RunConfig(), **{
        "data.input_size": 32,
        "data.bg_ratio": 0.25, "method.name": method, "method.mask_warmup_epochs": 0, "train.epochs": epochs,
        "train.batch_size": 8, "train.log_every": 2, "model.backbone": "tiny", "eval.scoremap_size": 32,
        "eval.cam_curve_interval": 0.05})


def load_state(result) -> dict:
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def tracked_run(shard_sets, tmp_path_factory, mlflow_server):
    """One 2-worker bgwsol run, tracked in the test MLflow server (shared by the tests below: a
    Ray Train start costs tens of seconds on 2 cores)."""
    from bgwsol.tracking.runs import TrackingConfig

    tracking = TrackingConfig(tracking_uri=mlflow_server, experiment="test-ray-train")
    cluster = ClusterConfig(num_workers=2, storage_path=str(tmp_path_factory.mktemp("runs")), run_name="tracked")
    return fit(tiny_config(shard_sets, epochs=2), RunData(*shard_sets), cluster, tracking=tracking)


def test_two_workers_train_evaluate_and_checkpoint(shard_sets, tracked_run):
    result = tracked_run
    assert result.error is None
    m = result.metrics
    assert m["epoch"] == 1 and 0 <= m["val_maxboxacc_v2"] <= 100 and m["val_num_images"] > 0
    assert {"train_cls", "train_bg", "train_obj", "train_mask"} <= set(m)
    state = load_state(result)
    assert state["epoch"] == 1 and len(state["history"]) == 2 and state["config"]["method"]["name"] == "bgwsol"
    assert {"model", "optimizer", "scheduler", "rng", "manifest"} <= set(state)
    # validation was evaluated across both ranks: every val sample counted once
    from bgwsol.data.shards.shardset import ShardSet

    assert m["val_num_images"] == ShardSet.open(shard_sets[0]).count("val")


def test_rerun_with_the_same_name_continues(shard_sets, tmp_path):
    cluster = ClusterConfig(num_workers=1, storage_path=str(tmp_path / "runs"), run_name="cont")  # resume, not DDP
    first = fit(tiny_config(shard_sets, "cam", epochs=1), RunData(*shard_sets), cluster)
    before = load_state(first)
    second = fit(tiny_config(shard_sets, "cam", epochs=2), RunData(*shard_sets), cluster)
    after = load_state(second)
    assert after["epoch"] == 1 and len(after["history"]) == 2
    assert after["history"][0] == before["history"][0]  # epoch 0 was not trained again


def test_a_rerun_with_another_config_is_refused_before_any_worker_starts(shard_sets, tmp_path):
    from bgwsol.data.shards.shardset import ShardSet
    from bgwsol.data.storage import Location
    from bgwsol.training.distributed import IncompatibleRun, claim_run

    cluster = ClusterConfig(num_workers=2, storage_path=str(tmp_path / "runs"), run_name="taken")
    claim_run(Location.parse(tmp_path / "runs" / "taken"), tiny_config(shard_sets, "cam"),
              ShardSet.open(shard_sets[0]).digest)
    t0 = time.monotonic()
    with pytest.raises(IncompatibleRun, match=r"method\.name: 'cam' -> 'bgwsol'"):
        fit(tiny_config(shard_sets, "bgwsol"), RunData(*shard_sets), cluster)
    assert time.monotonic() - t0 < 10  # refused on the driver: no worker group was started
    assert not list((tmp_path / "runs" / "taken").glob("checkpoint_*"))


def test_a_dead_mlflow_server_stops_the_run_before_training(shard_sets, tmp_path):
    from conftest import free_port

    from bgwsol.tracking.runs import TrackingConfig, TrackingUnavailable

    cluster = ClusterConfig(num_workers=2, storage_path=str(tmp_path / "runs"), run_name="untracked")
    with pytest.raises(TrackingUnavailable, match="unreachable.*nothing was trained"):
        fit(tiny_config(shard_sets), RunData(*shard_sets), cluster,
            tracking=TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}"))
    assert not (tmp_path / "runs" / "untracked").exists()  # no run was started or claimed


def test_damaged_shards_are_left_out_counted_and_reported(shard_sets, tmp_path):
    import shutil

    from bgwsol.data.shards.shardset import ShardSet

    root = tmp_path / "damaged"
    shutil.copytree(shard_sets[0], root)
    shards = ShardSet.open(root)
    cut = [Path(shards.urls("train")[0]), Path(shards.urls("val")[-1])]
    for path in cut:  # uploads cut off halfway
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = fit(tiny_config(shard_sets, "cam", epochs=1), RunData(str(root), shard_sets[1]), ClusterConfig(num_workers=1, storage_path=str(tmp_path / "runs"), run_name="damaged"))
    m = result.metrics
    lost_val = shards.shards("val")[-1]["count"]
    assert m["damaged_shards"] == 2
    assert m["damaged_samples"] == shards.shards("train")[0]["count"] + lost_val
    assert m["val_missing"] == lost_val and m["val_num_images"] == shards.count("val") - lost_val


@pytest.mark.mlflow
def test_rank0_logs_to_a_real_mlflow_server(tracked_run, mlflow_server):
    from mlflow import MlflowClient

    result = tracked_run
    run_id = load_state(result)["mlflow_run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["method.name"] == "bgwsol" and run.data.params["cluster.num_workers"] == "2"
    assert len(run.data.tags["git_sha"]) in (7, 40) or run.data.tags["git_sha"] == "unknown"
    assert run.data.tags["dataset_manifest_sha256"] == load_state(result)["manifest"]
    history = client.get_metric_history(run_id, "val_maxboxacc_v2")
    assert [m.step for m in history] == [0, 1]
    for term in ("step/cls", "step/bg", "step/obj", "step/mask", "step/lr"):
        assert client.get_metric_history(run_id, term), term
    pictures = [f.path for f in client.list_artifacts(run_id, "overlays")]
    assert pictures == ["overlays/overlays_epoch000.png", "overlays/overlays_epoch001.png"]
    assert len(client.search_runs([run.info.experiment_id])) == 1  # only rank 0 logged
    # the experiment opens on its runs (not MLflow 3's GenAI overview), and the run names the shard
    # sets it read as dataset inputs: source URL and manifest digest (the runs table's Dataset column)
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"ilsvrc-shards", "background-shards"}
    data = inputs["ilsvrc-shards"]
    assert data.dataset.digest == load_state(result)["manifest"][:36]
    assert json.loads(data.dataset.source)["uri"].endswith("ilsvrc") and data.tags[0].value == "training"
    # the S3 secret the workers inherit is in no param, tag or checkpoint
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if secret in v]
    with result.checkpoint.as_directory() as d:
        assert secret.encode() not in (Path(d) / CHECKPOINT_FILE).read_bytes()


@pytest.mark.mlflow
def test_registry_alias_moves_only_on_improvement_and_localize_uses_it(tracked_run, tmp_path, mlflow_server,
                                                                       tiny_synthetic, capsys):
    from mlflow import MlflowClient

    from bgwsol.serving.cli import main as cli_main
    from bgwsol.training.distributed import best_checkpoint
    from bgwsol.tracking.model_registry import log_and_register

    state, metrics = best_checkpoint(tracked_run)
    taus = {iou: metrics[f"val_tau{iou}"] for iou in (30, 50, 70)}
    kw = dict(tracking_uri=mlflow_server, run_id=state["mlflow_run_id"], name="bgwsol-test", taus=taus)
    v1 = log_and_register(state, metric=50.0, **kw)
    v2 = log_and_register(state, metric=40.0, **kw)
    client = MlflowClient(mlflow_server)
    # the version links to the run that trained it and to its logged model, both ways, as MLflow 3
    # records it (the version's source is the logged model; the logged model lists its versions)
    import json

    version = client.get_model_version("bgwsol-test", str(v1.version))
    assert version.run_id == state["mlflow_run_id"] and version.source == v1.model_uri
    logged = client.get_logged_model(v1.model_uri.removeprefix("models:/"))
    assert logged.source_run_id == state["mlflow_run_id"]
    assert {"name": "bgwsol-test", "version": str(v1.version)} in json.loads(logged.tags["mlflow.modelVersions"])
    assert (v1.champion, v2.champion) == (True, False)
    assert client.get_model_version_by_alias("bgwsol-test", "champion").version == str(v1.version)
    v3 = log_and_register(state, metric=60.0, **kw)
    assert v3.champion and client.get_model_version_by_alias("bgwsol-test", "champion").version == str(v3.version)

    paths, _ = tiny_synthetic
    image = sorted((paths.ilsvrc / "Data/CLS-LOC/val").glob("*.JPEG"))[0]
    rc = cli_main(["localize", "--model", "models:/bgwsol-test@champion", "--tracking-uri", mlflow_server,
                   "--out", str(tmp_path / "loc"), str(image), str(tmp_path / "missing.jpg")])
    out, err = capsys.readouterr()
    assert rc == 1 and "missing.jpg: skipped: " in err
    lines = [ln for ln in out.splitlines() if ln.startswith(str(image))]
    assert len(lines) == 1, out
    fields = lines[0].split("\t")
    assert fields[0] == str(image) and fields[2].startswith("class ") and fields[3].startswith("score ")
    from PIL import Image

    with Image.open(tmp_path / "loc" / f"{image.stem}_localized.png") as drawn, Image.open(image) as photo:
        assert drawn.size == photo.size  # the overlay is the photo at its own size


@pytest.mark.mlflow
def test_tune_runs_three_trials_and_asha_stops_the_weak_one(shard_sets, tmp_path, mlflow_server, monkeypatch):
    from mlflow import MlflowClient

    from bgwsol.tracking.runs import TrackingConfig
    from bgwsol.training.tune import SearchConfig, run_search

    base = tiny_config(shard_sets, "bgwsol", epochs=2)
    monkeypatch.chdir(tmp_path)  # a relative storage path must mean the same folder inside the trials
    # one worker per trial: the plumbing under test is Tune's, and 2-worker runs are tested above
    cluster = ClusterConfig(num_workers=1, storage_path="tune", max_failures=0)
    tracking = TrackingConfig(tracking_uri=mlflow_server, experiment="test-tune")
    # The search maximizes the reported learning rate: on a dataset this tiny no quality metric
    # orders trials reliably, and what is under test is the plumbing (Optuna proposals, per-epoch
    # reports from Train V2 workers to Tune, ASHA stopping a TorchTrainer, nested MLflow runs).
    search = SearchConfig(num_samples=3, max_concurrent=1, metric="lr", mode="max", grace_period=1,
                          reduction_factor=2)
    good = {"lambda_bg": 1.0, "lambda_mask": 0.5, "lambda_fg": 0.5, "lambda_area": 0.0, "alpha": 0.8, "lr": 0.05}
    points = [good, {**good, "lr": 0.08}, {**good, "lr": 1e-7}]  # run in this order
    outcome = run_search(base, RunData(*shard_sets), cluster, tracking, search, name="t3", points_to_evaluate=points)
    assert outcome.num_trials == 3
    epochs_by_lr = {round(r.config["lr"], 9): r.metrics["epoch"] + 1 for r in outcome.results}
    assert epochs_by_lr == {0.05: 2, 0.08: 2, 1e-7: 1}  # ASHA stopped the third at the first rung
    assert outcome.num_stopped_early == 1
    assert outcome.best_params["lr"] == 0.08
    from bgwsol.training.distributed import best_checkpoint

    state, metrics = best_checkpoint(outcome.best_run())  # the best trial's own Ray Train run, on storage
    assert state["config"]["train"]["lr"] == 0.08 and "val_tau50" in metrics
    assert "val_tau50" in outcome.best_metrics
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("test-tune")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert len(children) == 3
