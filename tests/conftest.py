import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


from bgwsol.tracking.local_server import free_port  # noqa: E402,F401  (tests import it from here)


FLOWS = Path(__file__).resolve().parents[1] / "flows"


def load_flow(name: str, module_name: str | None = None, folder: Path = FLOWS):
    """``flows/<name>.py`` (or ``<folder>/<name>.py``) imported as a module (registered in
    ``sys.modules``: dataclasses defined in a flow look their module up there)."""
    import importlib.util
    import sys

    module_name = module_name or name
    spec = importlib.util.spec_from_file_location(module_name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def upload_tree(folder, url: str) -> None:
    """Copy every file below ``folder`` to ``url`` (an s3:// prefix), keeping relative paths."""
    from bgwsol.data.storage import Location

    root = Location.parse(url)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            root.join(p.relative_to(folder).as_posix()).write_bytes(p.read_bytes())


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small synthetic ILSVRC + CUB + background set (3 classes)."""
    from bgwsol.data.sources.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(seed=3, num_classes=3, train_per_class=14, test_per_class=4, num_background=12,
                          cub_train_per_class=3, cub_test_per_class=2, min_side=64, max_side=80)
    return generate(tmp_path_factory.mktemp("syn"), cfg, show_progress=False), cfg


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto's server) on 127.0.0.1, exported through the AWS variables.

    Session-wide, and started before Ray so that Ray's worker processes inherit the variables.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="moto-secret-never-logged", AWS_REGION="us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh bucket on the test endpoint; yields its name."""
    from bgwsol.data.storage import boto3_client

    name = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    boto3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A local Ray with 2 CPUs, shared by the whole session.

    The dashboard stays on: Tune's cleanup of trials stopped by ASHA goes through it (without
    it their placement groups leak and later trials wait forever).
    """
    import ray

    from bgwsol.ray_init import RayConfig, job_runtime_env

    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False,
             runtime_env=job_runtime_env(RayConfig()))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    from bgwsol.training.cluster_resources import open_ledger

    ledger = open_ledger()  # as a job's ResourceWatch does: every run tells it what it holds
    _SESSION_START.update(train_footprint())
    yield ray
    ray.kill(ledger)
    ray.shutdown()


_SESSION_START: set[str] = set()


def train_footprint() -> dict[str, str]:
    """What holds or may hold the session Ray's resources for Ray Train: placement groups not
    removed and live Ray Train controllers and workers, ``{id: description}``."""
    from bgwsol.training.cluster_resources import describe_bundles, live_placement_groups, live_train_actors

    found = {pg.placement_group_id: f"placement group {pg.placement_group_id[:8]} ({describe_bundles(pg)}, "
                                    f"{pg.state})" for pg in live_placement_groups()}
    found.update({a.actor_id: f"{a.class_name} {a.actor_id[:8]} (pid {a.pid})" for a in live_train_actors()})
    return found


@pytest.fixture(autouse=True)
def nothing_left_on_ray(request):
    """After each test that uses the session's Ray: no placement group, Ray Train controller or
    worker that appeared during the test may be left (30 s allowed for Ray's asynchronous
    cleanup). What is left is removed (placement groups through Ray; actors' processes killed,
    all on this machine) and the test fails: one leak must never starve the tests after it."""
    if "ray_local" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("ray_local")
    # the session's fixtures (the shared main-job run) are set up before this one: what they left
    # counts too, so nothing but what the session's Ray started with may remain after a test
    before = _SESSION_START
    yield
    import signal
    import time

    from bgwsol.training.cluster_resources import live_train_actors, remove_placement_group

    deadline = time.monotonic() + 30
    while True:
        left = {k: v for k, v in train_footprint().items() if k not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    if left:
        pids = {a.actor_id: a.pid for a in live_train_actors()}
        for key, what in left.items():
            try:
                if what.startswith("placement group"):
                    remove_placement_group(key)
                elif pids.get(key):
                    os.kill(pids[key], signal.SIGKILL)
            except Exception:  # gone meanwhile
                pass
        pytest.fail(f"left on the session's Ray after the test (removed now): {'; '.join(left.values())}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (sqlite store, proxied local artifact store) on 127.0.0.1."""
    from bgwsol.tracking.local_server import start

    with start(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.url


# the main job on tiny data (tests/test_pipeline.py, tests/test_mlflow_ui.py): small everything
TINY_PIPELINE = {
    "run.data.input_size": 32, "run.data.bg_ratio": 0.25, "run.method.mask_warmup_epochs": 0,
    "run.train.epochs": 1, "run.train.batch_size": 8, "run.train.log_every": 2, "run.model.backbone": "tiny",
    "run.eval.scoremap_size": 32, "run.eval.cam_curve_interval": 0.05, "etl.val_fraction": 0.3,
    "search.num_samples": 1, "search.max_concurrent": 1, "search.grace_period": 1,
    "cluster.num_workers": 2, "cluster.max_failures": 0, "etl.max_short_side": 40, "etl.samples_per_shard": 9,
}


def cpu_hogs(n: int = 2) -> list:
    """``n`` busy processes at the niceness of Ray's own workers (15), as another Ray job's workers
    on the same machine run (at niceness 0 they would starve Ray's workers altogether)."""
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.nice(15))
            for _ in range(n)]


def photos_in_class_folders(ilsvrc_root, output: Path) -> Path:
    """The tiny ILSVRC set as a user's own photos: one folder per class, VOC XML (as LabelImg
    writes it, by ``benchmarks/cub_to_folder.py``'s writer) for its val images and a third of its
    train images; the other images have no box."""
    from bgwsol.data.sources.splits import hold_out, read_dataset

    writer = load_flow("cub_to_folder", "bench_cub_to_folder", folder=FLOWS.parent / "benchmarks")
    train, test, classes, _ = read_dataset("ilsvrc", ilsvrc_root)
    train, boxed_train = hold_out(train, 0.3)
    writer.write_tree(train + boxed_train + test, classes, output, {s.image_id for s in boxed_train + test}, coco=False)
    return output


@pytest.fixture(scope="session")
def pipeline_run(tiny_synthetic, ray_local, tmp_path_factory):
    """One run of the main job as README "Your own photos" runs it, on tiny data, shared by the
    tests that inspect it: ``(result, workdir)``.

    Class folders with VOC boxes (:func:`photos_in_class_folders`) are sharded by
    ``flows/shard_folder.py`` (the README's first command; its shards must be reused), then
    ``flows/train_folder.py``'s configuration runs with the tiny sizing. It runs as on a shared
    machine: two CPU hogs beside it, and two Tune trials of two Ray Train workers each on the
    session's two CPUs (issue #21: a trial that kept its placement group starved the next one for
    ever); tests/test_cluster_resources.py checks that it finished and left nothing. Relative
    output, shard and storage paths (as a user gives them) under ``workdir``; the job starts and
    stops its own MLflow server. The CAM baseline is the same fit + test evaluation as the tuned
    model: skipped to save a Ray Train start.
    """
    from bgwsol.config import replace
    from bgwsol.workflows.main_job import run_pipeline

    paths, _ = tiny_synthetic
    work = tmp_path_factory.mktemp("pipeline")
    photos = photos_in_class_folders(paths.ilsvrc, work / "photos")
    etl = {key: value for key, value in TINY_PIPELINE.items() if key.startswith("etl.") and key != "etl.val_fraction"}
    hogs = cpu_hogs()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(work)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            assert load_flow("shard_folder").main(["--source", str(photos), "--output", "shards/folder",
                                                   *[a for k, v in etl.items() for a in (f"--{k}", str(v))]]) == 0
            # read by tests/test_pipeline.py: the job must reuse these shards, not write them again
            (work / "sharded_at").write_text(str((work / "shards/folder/manifest.json").stat().st_mtime_ns))
            cfg = replace(load_flow("train_folder").DEFAULTS, **{
                **TINY_PIPELINE, "search.num_samples": 2, "etl.val_fraction": 0.5, "source": str(photos),
                "background": str(paths.background), "model_name": "bgwsol-fruit", "output_dir": "out",
                "shards_dir": "shards", "cluster.storage_path": "ray", "baseline": ""})
            return run_pipeline(cfg), work
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.fixture(scope="session")
def shard_sets(tiny_synthetic, ray_local, tmp_path_factory):
    """Local shard sets of the tiny synthetic ILSVRC (uneven shards) and its background set."""
    from bgwsol.data.shards.etl import ShardConfig, SplitListing, dataset_listings, listing_rows, write_shard_set
    from bgwsol.data.sources.background import read_background_folder

    paths, _ = tiny_synthetic
    root = tmp_path_factory.mktemp("shards")
    cfg = ShardConfig(max_short_side=40, samples_per_shard=9)
    listings, classes, names = dataset_listings("ilsvrc", paths.ilsvrc, 0.3)
    write_shard_set(listings, root / "ilsvrc", dataset="ilsvrc", classes=classes, class_names=names, cfg=cfg)
    bg = [SplitListing("background", listing_rows(read_background_folder(paths.background), []))]
    write_shard_set(bg, root / "bg", dataset="background", classes=[], cfg=cfg)
    return str(root / "ilsvrc"), str(root / "bg")
