"""infra/, checked offline: files parse, point at files that exist, keep secrets out, and the
scripts at least parse; MLflow's start script refuses a bad environment and builds the right
command. No Docker, Kubernetes or network needed.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE_FILES = sorted(INFRA.glob("*/compose.yaml"))
SCRIPTS = sorted(INFRA.rglob("*.sh"))
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
SECRETISH = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", re.I)


def locked_version(package: str) -> str:
    m = re.search(rf"^{re.escape(package)}==(\S+)", (ROOT / "requirements.lock").read_text(), re.M)
    assert m, f"{package} not in requirements.lock"
    return m.group(1)


def test_infra_has_what_the_cluster_issue_asks_for():
    for rel in ("minio/compose.yaml", "minio/bootstrap.sh", "mlflow/compose.yaml", "mlflow/start.sh",
                "kuberay/rayjob.yaml", "Dockerfile", "README.md"):
        assert (INFRA / rel).is_file(), rel


@pytest.mark.parametrize("path", [*INFRA.rglob("*.yaml"), ROOT / "ray_cluster.yaml"], ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.json")), ids=lambda p: str(p.relative_to(ROOT)))
def test_json_parses(path):
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict) and doc  # an IAM policy or a dashboard: a non-empty object


# ------------------------------------------------------------------------------ compose

@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_services_are_complete_and_hold_no_literal_secret(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["services"]
    for name, svc in spec["services"].items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        build = svc.get("build")
        if build:
            ctx = path.parent / build.get("context", ".")
            assert (ctx / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (path.parent / src).exists(), f"{name}: mounts missing {src}"
        for dep in svc.get("depends_on", {}):
            assert dep in spec["services"], f"{name} depends on unknown service {dep}"
        for key, value in (svc.get("environment") or {}).items():
            if SECRETISH.search(key):
                # a secret comes from the .env file / environment, never from this file
                assert str(value).startswith("${"), f"{name}: {key} has a literal value"
        for port in svc.get("ports", []):
            assert str(port).startswith("${"), f"{name}: port {port} binds all interfaces unconditionally"


@pytest.mark.parametrize("path", sorted(INFRA.glob("*/env.example")), ids=lambda p: str(p.relative_to(ROOT)))
def test_env_examples_leave_secrets_empty_and_real_env_files_are_ignored(path):
    for line in path.read_text().splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if SECRETISH.search(key):
            assert value == "", f"{path.name}: {key} has a value"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path.parent / ".env")], cwd=ROOT)
    assert ignored.returncode == 0, f"{path.parent / '.env'} is not git-ignored"


# ------------------------------------------------------------------------------ images

def dockerfile_lines(path: Path) -> list[str]:
    return [ln for ln in re.sub(r"\\\n", " ", path.read_text()).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_cluster_dockerfile_builds_on_the_locked_ray_and_copies_existing_files():
    import ray

    lines = dockerfile_lines(INFRA / "Dockerfile")
    assert lines[0] == f"FROM rayproject/ray:{ray.__version__}-py311-gpu"
    assert locked_version("ray") == ray.__version__
    text = " ".join(lines)
    assert "requirements.lock" in text and "--require-hashes" in text
    assert "pip sync" not in text, "sync would uninstall the base image's packages"
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            sources = [w for w in shlex.split(line)[1:-1] if not w.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert f"!{src}" in ignore, f"COPY {src}: excluded from the build context by Dockerfile.dockerignore"


def test_mlflow_image_runs_the_locked_mlflow_with_auth():
    text = " ".join(dockerfile_lines(INFRA / "mlflow" / "Dockerfile"))
    assert f'"mlflow[auth]=={locked_version("mlflow")}"' in text, "server and clients should run the same MLflow"
    assert "psycopg2" in text and "boto3" in text
    assert "start.sh" in text


# ------------------------------------------------------------------------------ KubeRay

def rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def containers(job: dict):
    spec = job["spec"]["rayClusterSpec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]["containers"][0]


def test_rayjob_runs_an_existing_flow_from_the_image():
    import ray

    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    m = re.match(r"python (\S+/)(flows/\w+\.py)\b", job["spec"]["entrypoint"])
    assert m, job["spec"]["entrypoint"]
    assert (ROOT / m.group(2)).is_file(), f"{m.group(2)} does not exist"
    workdir = next(ln.split()[1] for ln in dockerfile_lines(INFRA / "Dockerfile") if ln.startswith("WORKDIR"))
    assert m.group(1) == workdir.rstrip("/") + "/", "the entrypoint path is not where infra/Dockerfile puts the flows"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_rayjob_head_takes_no_tasks_and_workers_have_gpus():
    spec = rayjob()["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in str(spec["headGroupSpec"])
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_rayjob_credentials_come_from_secrets_or_the_service_account():
    job = rayjob()
    for where, c in containers(job):
        env = {e["name"]: e for e in c.get("env", [])}
        assert "MLFLOW_TRACKING_URI" in env, f"{where}: no MLflow URI"
        for name, e in env.items():
            if SECRETISH.search(name) or name == "MLFLOW_TRACKING_USERNAME":
                assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), f"{where}: {name} not from a Secret"
    for group in [job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]:
        assert group["template"]["spec"]["serviceAccountName"] == "bgwsol-ray"
    sa = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d and d.get("kind") == "ServiceAccount"]
    assert sa and "eks.amazonaws.com/role-arn" in sa[0]["metadata"]["annotations"]


# ------------------------------------------------------------------------------ scripts

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_are_executable(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK), f"{script} is not executable"
    if script.read_text().startswith("#!/bin/sh") and shutil.which("dash"):
        subprocess.run(["dash", "-n", str(script)], check=True)  # POSIX sh, for the mc image


def run_start(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INFRA / "mlflow" / "start.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=20)


@pytest.fixture
def fake_mlflow(tmp_path):
    """A PATH with an `mlflow` whose interpreter imports anything (start.sh checks its modules)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    py = bindir / "python"
    py.write_text("#!/bin/sh\nexit 0\n")
    (bindir / "mlflow").write_text(f"#!{py}\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    return f"{bindir}:/usr/bin:/bin"


FULL_ENV = {
    "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlflow:db-secret-pw@postgres:5432/mlflow",
    "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg2://mlflow@postgres:5432/mlflow_auth",
    "MLFLOW_ARTIFACTS_DESTINATION": "s3://bgwsol-mlflow/artifacts",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-secret-0123456789",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-abc",
}


def test_mlflow_start_names_every_missing_variable(fake_mlflow):
    done = run_start({"PATH": fake_mlflow})
    assert done.returncode == 2
    for var in FULL_ENV:
        assert f"{var} is not set" in done.stderr


def test_mlflow_start_refuses_a_short_admin_password_and_a_missing_mlflow(fake_mlflow):
    done = run_start({**FULL_ENV, "PATH": fake_mlflow, "MLFLOW_AUTH_ADMIN_PASSWORD": "short"})
    assert done.returncode == 2 and "12+ characters" in done.stderr
    done = run_start({**FULL_ENV, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "mlflow command is not on PATH" in done.stderr


def test_mlflow_start_check_builds_an_authenticated_server_command_without_leaking_secrets(fake_mlflow):
    done = run_start({**FULL_ENV, "PATH": fake_mlflow}, "--check")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "--app-name basic-auth" in out
    assert "--artifacts-destination s3://bgwsol-mlflow/artifacts" in out
    assert "default_permission = READ" in out and "database_uri = postgresql+psycopg2://***@postgres:5432/mlflow_auth" in out
    for secret in ("db-secret-pw", "admin-secret-0123456789", "flask-secret-abc"):
        assert secret not in out + done.stderr


def test_mlflow_server_flags_used_by_start_exist():
    """The flags start.sh passes are options of this MLflow's `server` command (read from its
    source: importing mlflow's CLI takes longer than this whole module)."""
    import importlib.util

    pkg = Path(importlib.util.find_spec("mlflow").origin).parent
    options = (pkg / "cli" / "__init__.py").read_text() + (pkg / "utils" / "cli_args.py").read_text()
    script = (INFRA / "mlflow" / "start.sh").read_text()
    block = script[script.index("cmd=(mlflow server"):script.index(")\n", script.index("cmd=(mlflow server"))]
    flags = re.findall(r"(--[a-z][a-z-]+)", block)
    assert "--app-name" in flags and "--backend-store-uri" in flags
    for flag in flags:
        assert f'"{flag}"' in options or f"'{flag}'" in options or f'"{flag}/' in options, f"mlflow server has no {flag}"


def test_iam_policies_scope_s3_to_the_bucket_and_passrole_to_the_worker_role():
    for name in ("head-policy.json", "worker-policy.json"):
        policy = json.loads((INFRA / "aws" / name).read_text())
        for st in policy["Statement"]:
            actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
            resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
            if any(a.startswith("s3:") for a in actions):
                assert all("BUCKET_NAME" in r for r in resources), f"{name}: S3 beyond the bucket"
            if "iam:PassRole" in actions:
                assert resources == ["arn:aws:iam::ACCOUNT_ID:role/bgwsol-ray-worker"]


def test_rayservice_deploys_the_serve_application_of_bgwsol_serve():
    import ray
    from ray.serve.schema import ServeDeploySchema

    from bgwsol.serving import http

    docs = [d for d in yaml.safe_load_all((INFRA / "kuberay" / "rayservice.yaml").read_text()) if d]
    (service,) = [d for d in docs if d.get("kind") == "RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))  # Ray's own schema
    (app,) = config.applications
    module, _, builder = app.import_path.partition(":")
    assert module == http.__name__ and callable(getattr(http, builder))
    assert set(app.args) <= {f.name for f in __import__("dataclasses").fields(http.ServeConfig)}
    assert not http.serve_problems(http.ServeConfig(**app.args))
    (deployment,) = app.deployments
    assert deployment.name == "BgwsolLocalizer"  # the class build_app deploys
    assert deployment.ray_actor_options.num_cpus == app.args["cpus_per_replica"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for group in [head, *service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0].get("env", [])}
        assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]  # from a Secret
