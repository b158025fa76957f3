import logging
import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


from bgwsol.mlflow_server import free_port  # noqa: E402,F401  (tests import it from here)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small synthetic ILSVRC + CUB + background set (3 classes)."""
    from bgwsol.data.synthetic import SyntheticConfig, generate

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

    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (sqlite store, proxied local artifact store) on 127.0.0.1."""
    from bgwsol.mlflow_server import start

    with start(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.url
