"""A real multi-node Ray cluster on this machine: the README's `ray job submit` commands for ETL
and the main job (training + tuning), training spread over two nodes, and a node lost mid-run.

Nodes are `ray start --block` processes, each in its own process group, so a node can be
killed whole (raylet, its workers) without touching the test session's own local Ray.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port

# node ports come from free_port's range, outside the kernel's ephemeral one (a port found free
# there can be taken by a running job's connection before the node binds it: seen in CI)
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class NodeExited(RuntimeError):
    """``ray start`` exited before its node joined the cluster."""


class Cluster:
    """A head node and worker nodes started with ``ray start --block`` on 127.0.0.1."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root  # short: Ray's socket paths must stay under 107 characters
        self.env = env
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.nodes: list[subprocess.Popen] = []
        self.logs = root / "nodes"
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str]) -> subprocess.Popen:
        n = len(self.nodes)
        log = open(self.logs / f"node{n}.log", "wb")
        # each node its own temp dir, as on separate machines (a node that starts cleans up the
        # runtime-env files it finds in its own, and must not delete a running job's working dir)
        # and its own agent ports: Ray's fixed defaults (52365 …) may be held by another Ray on
        # the machine (the suite's own), and an agent that cannot bind its HTTP port stays up
        # without it, so the head then refuses every job ("No available agent to submit job")
        ports = [arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                  "--metrics-export-port", "--runtime-env-agent-port")
                 for arg in (flag, str(free_port()))]
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                                 "--temp-dir", str(self.root / f"n{n}"), *ports, *args],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def start_head(self) -> None:
        self._start_node(["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                          "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)], want=1)

    def add_node(self) -> subprocess.Popen:
        return self._start_node(["--address", f"127.0.0.1:{self.gcs_port}"], want=self.alive_nodes() + 1)

    def _start_node(self, args: list[str], want: int, attempts: int = 3) -> subprocess.Popen:
        """Start a node and wait until the cluster counts ``want`` alive nodes. A node whose start
        failed is started afresh (own temp dir, new ports), at most ``attempts`` times: on a busy
        machine the raylet gives its dashboard agent a fixed 15 s (not configurable in this Ray) to
        write its port file, and the agent's imports alone can take longer (seen: 33 s)."""
        for attempt in range(1, attempts + 1):
            proc = self._start(args)
            try:
                self.wait_for_nodes(want)
                return proc
            except NodeExited:
                if attempt == attempts:
                    raise
                try:  # what the failed start left running (its GCS would hold the head's port)
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        raise AssertionError("unreachable")

    def alive_nodes(self) -> int:
        import requests

        try:
            nodes = requests.get(f"{self.dashboard}/nodes?view=summary", timeout=5).json()["data"]["summary"]
        except (requests.RequestException, ValueError, KeyError):
            return 0
        return sum(1 for n in nodes if n.get("raylet", {}).get("state") == "ALIVE")

    def wait_for_nodes(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.alive_nodes() >= n:
                return
            if any(p.poll() is not None for p in self.nodes[-1:]):
                log = self.logs / f"node{len(self.nodes) - 1}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise NodeExited(f"ray start exited ({' '.join(tail)}); see {log} and its --temp-dir's logs")
            time.sleep(0.5)
        raise TimeoutError(f"{n} Ray nodes did not come up in {timeout_s:.0f} s; see {self.logs}")

    def kill(self, proc: subprocess.Popen, timeout_s: float = 120) -> None:
        """The node is lost: SIGKILL to its raylet and everything it started; returns once the
        cluster has noticed (its health checks mark the node dead)."""
        alive = self.alive_nodes()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
        deadline = time.monotonic() + timeout_s
        while self.alive_nodes() >= alive:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the killed node was not marked dead within {timeout_s:.0f} s")
            time.sleep(1)

    def shutdown(self) -> None:
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.nodes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        # workers that outlived their raylet (they exit on their own within seconds; make sure)
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if f"{self.root}/".encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass

    def job(self, *command: str, wait: bool = True) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir . -- <command>`` from the repository root, as the README shows."""
        flags = [] if wait else ["--no-wait"]
        deadline, attempt = time.monotonic() + 180, 0
        while True:
            done = subprocess.run([str(BIN / "ray"), "job", "submit", *flags, "--working-dir", ".", "--", *command],
                                  cwd=REPO, env={**self.env, "RAY_ADDRESS": self.dashboard}, capture_output=True,
                                  text=True, timeout=900)
            # a fresh head's job agent refuses submissions until it is up ("No available agent to
            # submit job"), which takes longer on a loaded machine; retried only when no job was
            # created (a submitted job's outcome is always what the caller asserts on)
            if done.returncode == 0 or "raysubmit_" in done.stdout + done.stderr or time.monotonic() > deadline:
                return done
            (self.logs / f"submit-failure-{attempt}.log").write_text(done.stdout + done.stderr)
            attempt += 1
            time.sleep(5)

    def job_status(self, job_id: str) -> str:
        from ray.job_submission import JobSubmissionClient

        return str(JobSubmissionClient(self.dashboard).get_job_status(job_id))

    def job_logs(self, job_id: str) -> str:
        """The job's driver log (also saved beside the node logs, for a failed test's reader)."""
        from ray.job_submission import JobSubmissionClient

        text = JobSubmissionClient(self.dashboard).get_job_logs(job_id)
        (self.logs / f"{job_id}.log").write_text(text)
        return text


@pytest.fixture
def cluster(s3_endpoint, tmp_path_factory):
    """Head (1 CPU) only; tests add nodes. The S3 endpoint's variables reach every node and job."""
    root = Path(f"/tmp/rc{free_port()}")  # short path for Ray's sockets
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    c = Cluster(root, env)
    c.start_head()
    yield c
    c.shutdown()


def _train_workers(dashboard: str) -> list[dict]:
    from ray.util.state import list_actors

    return [a for a in list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                                   limit=1000, raise_on_missing_output=False)]


def _checkpoints(bucket: str, prefix: str) -> list[str]:
    """Keys of the Ray Train checkpoint folders under ``prefix``, oldest first (names carry the time)."""
    from bgwsol.data.storage import boto3_client

    pages = boto3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    found = (re.match(r"(.*/checkpoint_\d{4}-\d\d-\d\d_[^/]+)/", k["Key"])
             for page in pages for k in page.get("Contents", []))
    return sorted({m.group(1) for m in found if m})


def test_readme_jobs_run_on_two_nodes_and_survive_a_lost_node(cluster, tiny_synthetic, bucket, mlflow_server,
                                                            tmp_path):
    paths, _ = tiny_synthetic
    etl = ["--etl.max_short_side", "40", "--etl.samples_per_shard", "9"]

    # 1. ETL as a Ray job (README: "Put the data on the cluster")
    done = cluster.job("python", "flows/shard_ilsvrc.py", "--source", str(paths.ilsvrc),
                       "--output", f"s3://{bucket}/shards/ilsvrc", "--etl.val_fraction", "0.3", *etl)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()
    from bgwsol.data.shards.shardset import ShardSet

    assert ShardSet.open(f"s3://{bucket}/shards/ilsvrc").count("train") > 0

    # 2. the main job (training + tuning), submitted while the head alone cannot place its two
    #    workers: the driver, Tune's trial and Train's controller settle on the head, then a second
    #    node arrives and the worker group spans both
    submitted = cluster.job(
        "python", "flows/train_ilsvrc.py", "--source", str(paths.ilsvrc), "--background", str(paths.background),
        "--shards_dir", f"s3://{bucket}/shards", "--cluster.storage_path", f"s3://{bucket}/runs",
        "--tracking.tracking_uri", mlflow_server, "--tracking.experiment", "cluster-test", "--baseline", "",
        "--output_dir", str(tmp_path / "out"), "--model_name", "bgwsol-cluster-test", *etl,
        "--etl.val_fraction", "0.3", "--run.data.input_size", "32", "--run.data.bg_ratio", "0.25",
        "--run.method.mask_warmup_epochs", "0", "--run.train.epochs", "3", "--run.train.batch_size", "8",
        "--run.model.backbone", "tiny", "--run.eval.scoremap_size", "32", "--run.eval.cam_curve_interval", "0.05",
        "--search.num_samples", "1", "--search.max_concurrent", "1", "--search.grace_period", "1",
        "--cluster.num_workers", "2", "--cluster.max_failures", "2", wait=False)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout + submitted.stderr).group(0)
    time.sleep(20)
    second = cluster.add_node()

    # 3. after the first checkpoint reaches the object store, the second node is lost; a
    #    replacement joins (as the autoscaler would bring one) and the run resumes
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not _checkpoints(bucket, "runs/"):
        assert cluster.job_status(job_id) in ("PENDING", "RUNNING"), cluster.job_logs(job_id)[-4000:]
        time.sleep(1)
    assert _checkpoints(bucket, "runs/"), "no checkpoint before the deadline:\n" + cluster.job_logs(job_id)[-4000:]
    spanning = {a["node_id"] for a in _train_workers(cluster.dashboard)}
    assert len(spanning) == 2, "the worker group did not span both nodes"
    cluster.kill(second)
    cluster.add_node()

    while time.monotonic() < deadline and cluster.job_status(job_id) in ("PENDING", "RUNNING"):
        time.sleep(2)
    logs = cluster.job_logs(job_id)
    assert cluster.job_status(job_id) == "SUCCEEDED", logs[-6000:]
    assert "reusing the committed shard set" in logs  # the ETL job's shards, not a second copy
    assert "registered bgwsol-cluster-test version 1" in logs

    # the trial's run finished its 3 epochs, each exactly once, across the restart
    import torch

    from bgwsol.data.storage import Location
    from bgwsol.training.distributed import CHECKPOINT_FILE

    latest = _checkpoints(bucket, "runs/")[-1]
    state = torch.load(__import__("io").BytesIO(Location.parse(f"s3://{bucket}/{latest}/{CHECKPOINT_FILE}")
                                                 .read_bytes()), map_location="cpu", weights_only=False)
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2]
    workers = _train_workers(cluster.dashboard)
    assert sum(1 for a in workers if a["state"] == "DEAD") >= 2  # the first group died, a new one finished
    assert len({a["node_id"] for a in workers}) == 3  # head, the lost node, its replacement
    json.dumps(state["history"])  # plain data
