"""A slow start is waited for, not fatal: the services a job starts itself (its local Ray node,
the MLflow server, a Serve application) are started again after a start that timed out, with
what the failed start left cleaned up, one line per retry, and one error line after the last."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bgwsol.errors import UserError
from bgwsol.service_start import is_start_timeout, start_with_retries
from conftest import free_port
from test_guards import slow_health_server

REPO = Path(__file__).resolve().parents[1]


def test_a_start_that_times_out_is_cleaned_up_and_tried_again(caplog):
    tries, cleaned = [], []

    def start():
        tries.append(1)
        if len(tries) < 3:
            raise TimeoutError("did not answer within 30 s")
        return "up"

    with caplog.at_level("WARNING", logger="bgwsol"):
        assert start_with_retries("The thing", start, lambda: cleaned.append(1), attempts=3) == "up"
    assert len(tries) == 3 and len(cleaned) == 2
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith("The thing did not start: did not answer within 30 s (load ")
    assert said[0].endswith("starting it again (2 of 3)") and said[1].endswith("(3 of 3)")


def test_the_last_try_ends_in_one_line_and_what_cannot_succeed_is_not_retried():
    tries, cleaned = [], []

    def slow():
        tries.append(1)
        raise Exception("The current node timed out during startup. This could happen ...")

    with pytest.raises(UserError) as err:
        start_with_retries("Ray's local node", slow, lambda: cleaned.append(1), attempts=2, advice="rerun later")
    assert len(tries) == 2 and len(cleaned) == 2
    assert "\n" not in str(err.value) and str(err.value).startswith("Ray's local node did not start: The current")
    assert "in any of 2 tries (" in str(err.value) and str(err.value).endswith("; rerun later")

    tries.clear()

    def wrong():
        tries.append(1)
        raise ValueError("num_cpus must be positive")

    with pytest.raises(ValueError):
        start_with_retries("Ray's local node", wrong, lambda: None, attempts=3)
    assert len(tries) == 1  # a wrong argument fails the same way every time
    assert not is_start_timeout(FileNotFoundError("/no/such/dir"))
    assert is_start_timeout(TimeoutError()) and is_start_timeout(RuntimeError("GCS has become overloaded"))


RAY_START_FAILS_ONCE = textwrap.dedent("""
    import logging, sys, ray
    import psutil  # Ray's vendored copy, on sys.path once ray is imported
    import ray._private.node as node
    from bgwsol.ray_init import RayConfig, init_ray

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    real = node.Node.start_ray_processes
    first = []

    def slow_once(self):
        real(self)  # the node's processes really start ...
        if not first:
            first.extend(p.pid for p in psutil.Process().children(recursive=True))
            # ... and the raylet is too slow to register, as on a cold, busy machine
            raise Exception("The current node timed out during startup. This could happen because some "
                            "of the raylet failed to startup or the GCS has become overloaded.")

    node.Node.start_ray_processes = slow_once
    init_ray(RayConfig(num_cpus=1))
    left = [pid for pid in first if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    print("FIRST", len(first), "LEFT", left)
    print("ANSWER", ray.get(ray.remote(lambda: 6 * 7).remote()))
    ray.shutdown()
""")


@pytest.mark.ray
def test_a_local_ray_whose_node_does_not_register_is_killed_and_started_again(tmp_path):
    """The first start's GCS, raylet and helpers really start, then the node 'times out'
    (Ray's fixed 30 s): every process of that start is gone, the second start answers a task."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RAY_START_FAILS_ONCE], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Ray's local node did not register within 30 s (load " in out
    assert "starting it again (2 of 3)" in out
    first = int(out.split("FIRST ")[1].split()[0])
    assert first >= 2  # the GCS and the raylet at least
    assert "LEFT []" in out and "ANSWER 42" in out


RAY_UNDER_HOGS = textwrap.dedent("""
    import os, subprocess, sys, time, ray
    from bgwsol.ray_init import RayConfig, init_ray

    # nice-0 busy loops, one per core, for at most 240 s: a laptop with a build running (load 2+ on 2 cores)
    hogs = [subprocess.Popen([sys.executable, "-c", "import time\\nt = time.time()\\nwhile time.time() - t < 240: pass"])
            for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(5)
        t0 = time.monotonic()
        init_ray(RayConfig(num_cpus=1))
        print("ANSWER", ray.get(ray.remote(lambda: 6 * 7).remote(), timeout=300), "after", round(time.monotonic() - t0))
        ray.shutdown()
    finally:
        for hog in hogs:
            hog.kill()
""")


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_ray_starts_beside_nice_0_cpu_hogs(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RAY_UNDER_HOGS], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=700)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ANSWER 42" in done.stdout


@pytest.mark.mlflow
def test_an_mlflow_server_that_does_not_answer_is_started_again_on_another_port(tmp_path, caplog, monkeypatch):
    from bgwsol.tracking import local_server
    from bgwsol.tracking.local_server import LocalMlflowServer

    asked = []  # the stuck server is given up on after 2 s; the real one gets the busy machine's 120 s
    monkeypatch.setattr(local_server, "machine_busy", lambda: asked.append(1) or len(asked) > 1)
    port = free_port()
    stuck = LocalMlflowServer(tmp_path, port, slow_health_server(port, 600.0))  # never answers in time
    with caplog.at_level("WARNING", logger="bgwsol"):
        server = stuck.ready(timeout_s=2.0, busy_timeout_s=120.0, attempts=2)
    assert stuck is server and stuck.port != port
    try:
        assert server.port != port and server.url.endswith(str(server.port))
        import requests

        assert requests.get(f"{server.url}/health", timeout=5).ok  # a real MLflow server answers
        said = [r.getMessage() for r in caplog.records if "starting it again" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith("The MLflow server did not start: mlflow server did not answer")
    finally:
        server.stop()


@pytest.mark.mlflow
def test_an_mlflow_server_whose_port_was_taken_is_started_again(tmp_path):
    from bgwsol.tracking.local_server import launch

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = launch(tmp_path, port).ready(attempts=2)
        try:
            assert server.port != port
        finally:
            server.stop()


@pytest.mark.mlflow
def test_an_mlflow_server_that_cannot_start_is_not_retried(tmp_path, monkeypatch):
    """A store the server cannot open fails the same way every time: one try, one line."""
    from bgwsol.tracking import local_server

    launches = []
    real_launch = local_server.launch
    monkeypatch.setattr(local_server, "launch", lambda *a, **k: launches.append(a) or real_launch(*a, **k))
    (tmp_path / "mlflow.db").write_text("not a database")
    with pytest.raises(RuntimeError, match="mlflow server exited with"):
        local_server.launch(tmp_path).ready(attempts=3)
    assert len(launches) == 1


RAY_NICENESS = textwrap.dedent("""
    import os, sys, ray
    from bgwsol.ray_init import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=1, worker_niceness=int(sys.argv[1])))
    print("NICE", ray.get(ray.remote(lambda: os.nice(0)).remote()))
    ray.shutdown()
""")


@pytest.mark.ray
@pytest.mark.parametrize("niceness", [0, 15])
def test_a_local_rays_workers_run_at_the_configured_niceness(tmp_path, niceness):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RAY_NICENESS, str(niceness)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"NICE {niceness}" in done.stdout
