"""Refusals that must come before any work: an unusable MLflow server, a run name holding
another training, and secrets kept out of written configs."""

import json
import time

import pytest
import yaml

from bgwsol.config import RunConfig, replace
from bgwsol.data.storage import Location
from bgwsol.training.distributed import IncompatibleRun, RUN_FILE, claim_run, identity_tag
from bgwsol.tracking.runs import TrackingConfig, TrackingUnavailable, check_tracking, redact_url
from conftest import free_port


def test_redact_url_hides_only_the_password():
    assert redact_url("https://alice:s3cr3t@mlflow.example.com:5000/x?y=1") == \
        "https://alice:***@mlflow.example.com:5000/x?y=1"
    assert redact_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_url("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"


def test_an_unreachable_tracking_server_is_refused_at_once_without_its_password():
    uri = f"http://bob:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable) as err:
        check_tracking(TrackingConfig(tracking_uri=uri))
    assert time.monotonic() - t0 < 10  # no retry loop
    msg = str(err.value)
    assert "unreachable" in msg and "bob:***@127.0.0.1" in msg and "hunter2" not in msg


def test_a_running_tracking_server_passes(mlflow_server):
    assert check_tracking(TrackingConfig(tracking_uri=mlflow_server)) == mlflow_server


def test_no_tracking_uri_means_no_check(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert check_tracking(TrackingConfig()) == ""


def test_a_run_name_continues_only_the_same_training(tmp_path):
    run_dir = Location.parse(tmp_path / "runs" / "r1")
    cfg = RunConfig()
    assert claim_run(run_dir, cfg, "a" * 64) is False  # first start records the identity
    assert json.loads((tmp_path / "runs/r1" / RUN_FILE).read_text())["manifest"] == "a" * 64
    assert claim_run(run_dir, cfg, "a" * 64) is True  # the same training: continue
    longer = replace(cfg, **{"train.epochs": 20, "eval.cam_curve_interval": 0.001})
    assert claim_run(run_dir, longer, "a" * 64) is True  # a longer schedule, finer evaluation: continue
    with pytest.raises(IncompatibleRun, match=r"train\.lr: 0\.05 -> 0\.1.*--cluster\.run_name"):
        claim_run(run_dir, replace(cfg, **{"train.lr": 0.1}), "a" * 64)
    with pytest.raises(IncompatibleRun, match=r"model\.backbone: 'tiny' -> 'resnet18'"):
        claim_run(run_dir, replace(cfg, **{"model.backbone": "resnet18"}), "a" * 64)
    with pytest.raises(IncompatibleRun, match="shard set aaaaaaaaaaaa, this run reads bbbbbbbbbbbb"):
        claim_run(run_dir, cfg, "b" * 64)


def test_a_run_name_continues_only_the_same_background_set(tmp_path):
    """A method that trains on background photos: other background photos are other training data."""
    run_dir = Location.parse(tmp_path / "runs" / "bg")
    cfg = replace(RunConfig(), **{"method.name": "bgwsol"})
    assert claim_run(run_dir, cfg, "a" * 64, "b" * 64) is False
    assert claim_run(run_dir, cfg, "a" * 64, "b" * 64) is True
    with pytest.raises(IncompatibleRun, match="background shard set bbbbbbbbbbbb, this run reads cccccccccccc"):
        claim_run(run_dir, cfg, "a" * 64, "c" * 64)
    assert identity_tag(cfg, "a" * 64, "b" * 64) != identity_tag(cfg, "a" * 64, "c" * 64)
    assert identity_tag(cfg, "a" * 64) == identity_tag(cfg, "a" * 64, "")  # no background: as before


def test_identity_tag_follows_the_training_not_its_length():
    cfg = RunConfig()
    assert identity_tag(cfg, "a" * 64) == identity_tag(replace(cfg, **{"train.epochs": 99}), "a" * 64)
    assert identity_tag(cfg, "a" * 64) != identity_tag(replace(cfg, **{"method.lambda_bg": 2.0}), "a" * 64)
    assert identity_tag(cfg, "a" * 64) != identity_tag(cfg, "b" * 64)


def test_the_written_pipeline_config_holds_no_password(tmp_path):
    from bgwsol.workflows.main_job import PipelineConfig, save_config

    cfg = replace(PipelineConfig(), **{"output_dir": str(tmp_path),
                                       "tracking.tracking_uri": "https://ops:pa55w0rd@mlflow.internal"})
    text = save_config(cfg).read_text()
    assert "pa55w0rd" not in text
    assert yaml.safe_load(text)["tracking"]["tracking_uri"] == "https://ops:***@mlflow.internal"


def test_git_state_outside_a_checkout_comes_from_the_job_environment(tmp_path, monkeypatch):
    from bgwsol.tracking.runs import git_state

    monkeypatch.delenv("BGWSOL_GIT_SHA", raising=False)
    monkeypatch.delenv("BGWSOL_GIT_DIRTY", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path
    assert git_state(tmp_path) == {"git_sha": "unknown", "git_dirty": "unknown"}
    monkeypatch.setenv("BGWSOL_GIT_SHA", "0123abc")
    monkeypatch.setenv("BGWSOL_GIT_DIRTY", "false")
    assert git_state(tmp_path) == {"git_sha": "0123abc", "git_dirty": "false"}
    assert len(git_state()["git_sha"]) == 40  # this checkout: git itself wins


def slow_health_server(port: int, delay_s: float):
    """A process that answers ``GET /health`` on ``port`` only after ``delay_s`` (a server still importing)."""
    import subprocess
    import sys

    code = ("import time, http.server\n"
            f"time.sleep({delay_s})\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(200); self.end_headers(); self.wfile.write(b'OK')\n"
            "    def log_message(self, *a): pass\n"
            f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n")
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_slow_server_start_is_waited_for_only_on_a_busy_machine(tmp_path, monkeypatch, caplog):
    """The main job's own MLflow server: on an idle machine the wait ends at ``timeout_s``; on a
    busy one (load at or above the CPU count) it extends to ``busy_timeout_s``, said once."""
    from bgwsol.tracking import local_server
    from bgwsol.tracking.local_server import LocalMlflowServer

    port = free_port()
    monkeypatch.setattr(local_server, "machine_busy", lambda: False)
    idle = LocalMlflowServer(tmp_path, port, slow_health_server(port, 4.0))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"did not answer on http://127.0.0.1:{port} within 1 s; see .*server.log"):
        idle.wait_ready(timeout_s=1.0, busy_timeout_s=30.0)
    assert time.monotonic() - t0 < 4.0 and idle.process.poll() is not None  # given up on, and stopped
    port = free_port()
    monkeypatch.setattr(local_server, "machine_busy", lambda: True)
    busy = LocalMlflowServer(tmp_path, port, slow_health_server(port, 2.0))
    try:
        with caplog.at_level("WARNING", logger="bgwsol"):
            assert busy.wait_ready(timeout_s=0.5, busy_timeout_s=60.0) is busy
        said = [r.getMessage() for r in caplog.records if "on a busy machine" in r.getMessage()]
        assert len(said) == 1 and "waiting up to 60 s" in said[0]
    finally:
        busy.stop()
