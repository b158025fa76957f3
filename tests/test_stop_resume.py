"""SIGTERM stops the main job with everything it started (its local Ray and every Ray worker
process, its MLflow server), and rerunning the same command resumes: the stopped Tune search
continues (Tune's restore, not a new search) and no epoch is trained twice. Both runs' consoles
are what a person should see: the job's own lines, no Ray internals, no tracebacks.

The baseline is left out (``--baseline ''``) to keep the suite's time: a rerun reuses it by the
same Ray Train resume by name that the trial's run uses here (tests/test_ray_train.py tests it
on its own)."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import TINY_PIPELINE

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def tagged_processes(tag: str) -> list[str]:
    """``pid cmdline`` of every live process whose environment carries ``BGWSOL_TEST_TAG=<tag>``
    (what the job started inherits it: Ray's raylet, GCS and workers, the MLflow server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            if f"BGWSOL_TEST_TAG={tag}".encode() in env:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; it only waits for its parent to read its status
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                    found.append(f"{entry.name} {cmdline!r}")
        except OSError:
            continue
    return found


def job_command(paths, work: Path) -> list[str]:
    # two epochs, one trial, no early stopping; one worker per run (2 cores)
    flags = {**TINY_PIPELINE, "run.train.epochs": 2, "search.num_samples": 1, "search.grace_period": 2,
             "cluster.num_workers": 1, "baseline": ""}
    argv = [sys.executable, str(ROOT / "flows/train_ilsvrc.py"), "--source", str(paths.ilsvrc),
            "--background", str(paths.background), "--output_dir", str(work / "out"),
            "--shards_dir", str(work / "shards"), "--cluster.storage_path", str(work / "ray")]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


def trial_checkpoints(storage: Path) -> dict[str, list[str]]:
    """Checkpoint folder names per Tune trial run (``tune-bgwsol-ilsvrc-<search>-<trial>``)."""
    found: dict[str, list[str]] = {}
    for ckpt in sorted(storage.glob("tune-bgwsol-ilsvrc-*-*/checkpoint_*/checkpoint.pt")):
        found.setdefault(ckpt.parent.parent.name, []).append(ckpt.parent.name)
    return found


def committed(storage: Path) -> bool:
    """Whether Ray Train has recorded a trial checkpoint in its checkpoint manager's snapshot. A
    checkpoint folder appears on disk before that; a job stopped in between rightly starts the
    trial again, so the resume check waits for this."""
    for snapshot in storage.glob("tune-bgwsol-ilsvrc-*-*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except ValueError:  # being written
            pass
    return False


def history(run_dir: Path) -> list[int]:
    """Epochs in the latest checkpoint of a Ray Train run folder."""
    latest = sorted(run_dir.glob("checkpoint_*/checkpoint.pt"))[-1]
    return [h["epoch"] for h in torch.load(latest, map_location="cpu", weights_only=False)["history"]]


def test_sigterm_stops_everything_and_a_rerun_resumes(tiny_synthetic, tmp_path):
    paths, _ = tiny_synthetic
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(BGWSOL_TEST_TAG=tag, PYTHONPATH=str(ROOT))
    command = job_command(paths, tmp_path)
    log = (tmp_path / "first.log").open("w")
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        # stop it once the baseline is done and Ray Train has committed a checkpoint of the trial
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and job.poll() is None:
            if committed(tmp_path / "ray"):
                break
            time.sleep(0.5)
        assert job.poll() is None, "the job ended before it was stopped:\n" + (tmp_path / "first.log").read_text()[-3000:]
        assert tagged_processes(tag), "the job's processes are not visible"
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) == 130
        stopped_with = trial_checkpoints(tmp_path / "ray")
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    first = (tmp_path / "first.log").read_text()
    left = tagged_processes(tag)
    for _ in range(20):  # processes told to exit may take a moment
        if not left:
            break
        time.sleep(0.5)
        left = tagged_processes(tag)
    assert left == [], f"processes left behind by the stopped job: {left}"

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "continuing its trials" in out  # Tune's restore, not a new search
    finished = trial_checkpoints(tmp_path / "ray")
    assert set(finished) == set(stopped_with) and len(finished) == 1  # the search's trial, not a new one
    # the rerun continued the trial from the last checkpoint Ray Train had committed (the workers
    # may write more while the job stops; those are not trusted): it trained fewer epochs than a
    # fresh start would, and the model's history holds each epoch once
    for trial, checkpoints in finished.items():
        assert history(tmp_path / "ray" / trial) == [0, 1]
        assert len(checkpoints) - len(stopped_with[trial]) < 2
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert "bgwsol" in results["test"] and (tmp_path / "out/report.html").is_file()
    assert tagged_processes(tag) == []
    check_console(first, stopped=True)
    check_console(second.stderr, stopped=False)
    assert "report.html" in second.stdout and "| bgwsol (tuned) |" in second.stdout  # the results on stdout


def check_console(text: str, stopped: bool) -> None:
    """What a person reads: each stage's start and end, the path of the log that holds the libraries'
    output, an epoch line with the metrics that matter; no Ray internals, tracebacks or numpy reprs."""
    assert "log: " in text and "--verbose shows it here" in text
    log_path = Path(text.split("log: ", 1)[1].split(" (", 1)[0])
    assert log_path.is_file() and "Traceback" not in text
    for noise in ("np.float64(", "core_worker", "TrainingReport(", "RayTrainWorker", "(pid=", "Trial status", "│",
                  "WARNING", "DeprecationWarning", "UserWarning"):
        assert noise not in text, f"{noise!r} on the console:\n{text[-3000:]}"
    assert "data: shards of " in text and "search: Ray Tune over bgwsol's loss weights" in text
    if stopped:  # stopped as soon as the trial's first checkpoint was on disk: its epoch line may not be out yet
        assert "train_ilsvrc: stopped" in text
    else:
        epoch_lines = [line for line in text.splitlines() if "  epoch 2/2  loss " in line]
        assert all("img/s" in line and "MaxBoxAccV2" in line for line in epoch_lines), text[-3000:]
        # the last epoch is trained by the rerun, or Ray Train had committed it while the first run
        # stopped: then the restored trial reports it and ends, and its line counts both epochs
        assert epoch_lines or "finished after 2 epoch(s)" in text, text[-3000:]
        assert "search: trial " in text and "1 of 1 trials done" in text
        assert "registry: done in " in text and "report: done in " in text
        assert len(text.splitlines()) < 60, text  # a page, not Ray's hundreds of lines
