"""ray_cluster.yaml, checked offline: Ray's own schema, EC2's own request shapes, and our rules
(a head without Ray CPUs, GPU types that scale from zero, no credentials, only SSH open).

Nothing here talks to AWS: `prepare_config` only merges Ray's bundled AWS defaults, and the
tests cut the network and hide every credential to prove it.
"""

import copy
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "ray_cluster.yaml"

GPU_TYPES = {"g5.12xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8}  # the types -> GPUs
CPU_ETL_FAMILIES = ("m6i.", "c6i.")


def load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def ray_validate(cfg: dict) -> dict:
    """What `ray up` does before it calls AWS: fill Ray's defaults, then validate (schema + rules)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, no AWS credentials or config files."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


def node_types(cfg: dict) -> dict:
    return cfg["available_node_types"]


def workers(cfg: dict) -> dict:
    return {k: v for k, v in node_types(cfg).items() if k != cfg["head_node_type"]}


# ------------------------------------------------------------------------------ Ray's schema

def test_config_passes_rays_own_validation_offline(offline):
    prepared = ray_validate(load())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # our empty head_setup_commands won over Ray's AWS default (`pip install boto3`)
    assert not any("pip install 'boto3" in c for c in prepared["head_setup_commands"])


@pytest.mark.parametrize("where, typo", [
    ((), "max_workerz"),                                           # top level
    (("available_node_types", "ray.worker.g5_12xlarge"), "min_workerz"),  # a node type
    (("docker",), "run_optionz"),
    (("auth",), "ssh_usr"),
    (("provider", "security_group"), "GroupNme"),
])
def test_a_misspelt_key_is_refused(offline, where, typo):
    cfg = load()
    ray_validate(cfg)  # the unmodified file passes: the failure below is the typo's
    node = cfg
    for key in where:
        node = node[key]
    right = {"max_workerz": "max_workers", "min_workerz": "min_workers", "run_optionz": "run_options",
             "ssh_usr": "ssh_user", "GroupNme": "GroupName"}[typo]
    node[typo] = node.pop(right)
    with pytest.raises(jsonschema.ValidationError, match=typo):
        ray_validate(cfg)


def test_inconsistent_worker_counts_are_refused(offline):
    cfg = load()
    for t in workers(cfg).values():
        t["min_workers"] = 5
    with pytest.raises(ValueError, match="max_workers"):
        ray_validate(cfg)


def test_provider_keys_are_ones_ray_knows():
    """Ray's schema lets any key into `provider` (additionalProperties: true), so a misspelt
    `regoin` would pass it silently: check against the keys the schema documents."""
    import ray.autoscaler

    import json
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    known = set(schema["properties"]["provider"]["properties"])
    assert set(load()["provider"]) <= known, set(load()["provider"]) - known


def test_node_configs_are_valid_ec2_run_instances_requests():
    """node_config goes to EC2's RunInstances as is: validate it with botocore's bundled EC2
    model (unknown keys, wrong types, misspelt nested fields)."""
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, t in node_types(load()).items():
        params = {**t["node_config"], "MinCount": 1, "MaxCount": 1}
        validate_parameters(params, shape)  # raises ParamValidationError naming the key
    bad = {**node_types(load())["ray.head.cpu"]["node_config"], "InstanceTyp": "m6i.large", "MinCount": 1, "MaxCount": 1}
    with pytest.raises(ParamValidationError, match="InstanceTyp"):
        validate_parameters(bad, shape)


# ------------------------------------------------------------------------------ our rules

def test_head_offers_no_cpu_to_tasks_and_keeps_the_dashboard_local():
    cfg = load()
    head = node_types(cfg)[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "tasks would land on the head"
    assert head["resources"].get("GPU", 0) == 0
    assert head["node_config"]["InstanceType"] not in GPU_TYPES
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--num-cpus=0" in start
    assert "--dashboard-host" not in start, "the dashboard must stay on the head's localhost"


def test_gpu_and_etl_worker_types_scale_from_zero():
    cfg = load()
    by_instance = {t["node_config"]["InstanceType"]: t for t in workers(cfg).values()}
    assert set(GPU_TYPES) <= set(by_instance), f"missing GPU types: {set(GPU_TYPES) - set(by_instance)}"
    etl = [i for i in by_instance if i.startswith(CPU_ETL_FAMILIES)]
    assert etl, "no CPU worker type for the Ray Data ETL"
    for instance in [*GPU_TYPES, *etl]:
        t = by_instance[instance]
        assert t.get("min_workers", 0) == 0, f"{instance} does not scale to zero"
        assert t.get("max_workers", 0) >= 1, f"{instance} can never start"
        # resources left to Ray's AWS autodetection (GPUs, CPUs, memory from the instance type)
        assert "CPU" not in t["resources"] and "GPU" not in t["resources"]
    assert sum(t.get("max_workers", 0) for t in workers(cfg).values()) <= cfg["max_workers"]


def test_image_matches_the_locked_ray_and_installs_the_lock():
    import ray

    cfg = load()
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    lock = (ROOT / "requirements.lock").read_text()
    assert f"\nray=={ray.__version__} " in lock
    setup = " ".join(cfg["setup_commands"])
    assert "requirements.lock" in setup and "--require-hashes" in setup
    assert cfg["file_mounts"]["/home/ray/bgwsol"] == "."
    assert ".gitignore" in cfg["rsync_filter"], ".venv and data would be rsynced to every node"


def test_s3_through_instance_profiles_and_no_credentials_in_the_file():
    cfg = load()
    for name, t in node_types(cfg).items():
        assert t["node_config"].get("IamInstanceProfile"), f"{name} has no instance profile for S3"
    assert "aws_credentials" not in cfg["provider"]
    assert "ssh_private_key" not in cfg["auth"]

    secretish = re.compile(r"secret|password|passwd|token|access_key|credential", re.I)

    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                assert not secretish.search(str(k)), f"secret-looking key {path}/{k}"
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(cfg)
    text = CONFIG.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id is in the file"
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*=", text)


def test_security_group_opens_nothing_but_ssh():
    rules = load()["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        assert rule.get("FromPort") == rule.get("ToPort") == 22, f"extra inbound rule {rule}"


def test_containers_use_the_providers_region():
    cfg = load()
    options = " ".join(cfg["docker"]["run_options"])
    assert f"AWS_REGION={cfg['provider']['region']}" in options
