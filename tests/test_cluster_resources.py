"""What a job's runs hold on the cluster and what it waits for (bgwsol/training/cluster_resources.py),
on the session's real Ray: the wait line, the bound, the release of what an ended run left, the
job's runtime environment, and the main job on a machine another job keeps busy."""

import os
import subprocess
import sys
import time

import pytest

from conftest import TINY_PIPELINE, train_footprint

pytestmark = pytest.mark.ray


def _placement_group(bundles: list[dict]):
    from ray.util.placement_group import placement_group

    return placement_group(bundles, strategy="PACK")


def test_job_runtime_env_reaches_the_actors_ray_train_starts(ray_local):
    """Ray Train's worker-group start timeout is set in the job's runtime environment (not in
    os.environ), and an actor started with runtime-env variables of its own, as Ray Train starts
    its controller, sees it too."""
    import ray

    from bgwsol.ray_init import RayConfig, job_runtime_env

    assert "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S" not in os.environ

    @ray.remote(num_cpus=0)
    class Probe:
        def env(self, key):
            return os.environ.get(key), os.environ.get("OWN")

    probe = Probe.options(runtime_env={"env_vars": {"OWN": "1"}}).remote()
    want = job_runtime_env(RayConfig())["env_vars"]["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]
    assert ray.get(probe.env.remote("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")) == (want, "1")
    assert float(want) >= 300


def test_wait_line_names_the_waiting_run_and_what_holds_the_cluster_then_release_frees_it(ray_local):
    """A run of the job waits for 2 CPUs that a placement group of a run that already ended holds
    (the failure of issue #21): the line names both; releasing the ended run lets the waiting
    placement group be placed; the watch says so after its notice time and stops at its bound."""
    import ray

    from bgwsol.training.cluster_resources import (LEDGER_NAME, ResourceWaitTimeout, ResourceWatch, look,
                                                   release_run)

    ledger = ray.get_actor(LEDGER_NAME)
    holder = _placement_group([{"CPU": 1}, {"CPU": 1}])
    assert holder.wait(30)
    ray.get(ledger.placement_group.remote("tune-old-e277aeab", holder.id.hex()))
    ray.get(ledger.ended.remote("tune-old-e277aeab"))
    ray.get(ledger.started.remote("tune-new-99888875"))
    waiting_group = _placement_group([{"CPU": 1}, {"CPU": 1}])
    try:
        assert not waiting_group.wait(2)
        job = ray.get_runtime_context().get_job_id()
        seen = look(job, ray.get(ledger.overview.remote()))
        line = seen.line(75)
        assert seen.demands == ["run tune-new-99888875: 2 × {CPU: 1}"]
        assert "2 CPU: the placement group of run tune-old-e277aeab (ended" in line
        assert line.startswith("waiting 1 min 15 s for run tune-new-99888875: 2 × {CPU: 1}: 2 of 2 CPUs in use by ")

        stops = []
        with ResourceWatch(limit_s=3.0, poll_s=0.5, on_limit=stops.append) as watch:
            deadline = time.monotonic() + 30
            while not stops and time.monotonic() < deadline:
                time.sleep(0.2)
        assert len(stops) == 1 and isinstance(stops[0], ResourceWaitTimeout)
        assert "run tune-new-99888875" in str(stops[0]) and "--cluster.resource_wait_s 3" in str(stops[0])
        assert any(w.startswith("waiting ") and "tune-old-e277aeab" in w for w in watch.lines[:-1])  # the notice

        released = release_run("tune-old-e277aeab", grace_s=0)
        assert released.startswith("run tune-old-e277aeab ended but still held its placement group ")
        assert waiting_group.wait(30)  # the waiting run gets its CPUs
        assert release_run("tune-old-e277aeab", grace_s=0) is None  # nothing left: nothing said
    finally:
        from ray.util import remove_placement_group

        for group in (waiting_group, holder):
            try:
                remove_placement_group(group)
            except Exception:
                pass
        ray.get(ledger.ended.remote("tune-new-99888875"))


@pytest.mark.slow
def test_main_job_on_a_busy_machine_finishes_and_leaves_nothing(pipeline_run):
    """The shared main-job run (tests/conftest.py) ran beside two CPU hogs with two 2-worker Tune
    trials on two CPUs (issue #21): it finished, both trials ran, and no placement group, Ray
    Train controller or worker of it is left."""
    result, work = pipeline_run
    assert "bgwsol (tuned)" in result["table"]
    assert len(list((work / "ray").glob("tune-bgwsol-folder-*/_trial_*"))) == 2  # both trials ran
    deadline = time.monotonic() + 30
    while train_footprint() and time.monotonic() < deadline:
        time.sleep(1)
    assert train_footprint() == {}


@pytest.mark.slow
def test_a_run_the_cluster_cannot_place_stops_the_job_in_one_line_within_its_bound(tiny_synthetic, tmp_path):
    """``flows/train_ilsvrc.py`` whose workers need 3 CPUs on a 2-CPU machine, with
    ``--cluster.resource_wait_s 20``: exit 1 with one error line naming what it waited for
    (the workers' bundles) and that nothing holds the CPUs; a rerun would continue."""
    paths, _ = tiny_synthetic
    flags = {**TINY_PIPELINE, "cluster.cpus_per_worker": 1.5, "cluster.resource_wait_s": 20,
             "search.num_samples": 1}
    argv = [sys.executable, "flows/train_ilsvrc.py", "--source", str(paths.ilsvrc), "--background",
            str(paths.background), "--output_dir", str(tmp_path / "out"), "--shards_dir", str(tmp_path / "shards"),
            "--cluster.storage_path", str(tmp_path / "ray")]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    # the flow starts its own local Ray and MLflow server (an earlier test's MLflow client may have
    # left MLFLOW_TRACKING_URI in this process's environment)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.monotonic()
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "2 × {CPU: 1.5}" in errors[0] and "--cluster.resource_wait_s 20" in errors[0]
    assert "the cluster is too small for it" in errors[0]
    assert "Traceback" not in done.stderr
    waited = [line for line in done.stderr.splitlines() if "warning: waiting " in line]
    assert waited and "2 × {CPU: 1.5}" in waited[0]  # the notice came first, at half the bound
    assert took < 300
