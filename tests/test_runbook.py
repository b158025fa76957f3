"""The cluster runbook's commands use real flags, and fit together.

Every `ray ...` command in infra/README.md's bash blocks and in ray_cluster.yaml's start
commands is parsed by Ray's own click CLI; every `python flows/...` command (there and in the
KubeRay RayJob) by the flow's own parser and config classes; nothing is executed. Then the
commands are checked against each other: the training job reuses the shards the ETL jobs
write, and its workers fit the GPU nodes of ray_cluster.yaml.
"""

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = ROOT / "infra" / "README.md"
CLUSTER = ROOT / "ray_cluster.yaml"
RAYJOB = ROOT / "infra" / "kuberay" / "rayjob.yaml"

# vCPUs and GPUs of the GPU instance types (AWS's published sizes); Ray detects the same at `ray up`
INSTANCES = {"g5.12xlarge": (48, 4), "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8)}


def bash_commands(markdown: str) -> list[list[str]]:
    """Commands of the ```bash blocks as a shell splits them: continuations joined, comments and
    leading VAR=value assignments dropped, command substitutions replaced by a word."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\$\([^()]*\)", "SUBST", line).strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line, comments=True)
            while words and (words[0] == "export" or re.match(r"^[A-Za-z_]\w*=", words[0])):
                words.pop(0)
            if words:
                commands.append(words)
    return commands


def is_ray(words: list[str]) -> bool:
    return words[0] in ("ray", ".venv/bin/ray")


def flow_call(words: list[str]) -> tuple[str, list[str]] | None:
    """``(flow file relative to the repo, its arguments)`` of a ``python .../flows/x.py ...`` command."""
    for i, w in enumerate(words[:-1]):
        m = re.search(r"(?:^|/)(flows/\w+\.py)$", words[i + 1])
        if w == "python" and m:
            return m.group(1), words[i + 2:]
    return None


def click_parse(cli, argv: list[str]):
    """Parse ``argv`` down the group's subcommands like the CLI would, without invoking anything."""
    import click

    ctx, cmd = cli.make_context(cli.name or "cli", list(argv)), cli
    while isinstance(cmd, click.Group):
        pending = getattr(ctx, "_protected_args", None)  # click >= 8.2; `protected_args` before
        rest = [*(pending if pending is not None else ctx.protected_args), *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return cmd, ctx


class Parsed(Exception):
    def __init__(self, cfg):
        self.cfg = cfg


def parse_flow(path: str, args: list[str]):
    """The config object ``flows/<path>`` builds from ``args`` (argparse + config validation), then stop."""
    import bgwsol.config as config

    real = config.config_from_args

    def capture(cls, namespace, defaults=None):
        raise Parsed(real(cls, namespace, defaults))

    name = f"runbook_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses defined in a flow look their module up there
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "config_from_args", capture)
        if hasattr(module, "config_from_args"):
            mp.setattr(module, "config_from_args", capture)
        with pytest.raises(Parsed) as got:
            module.main(list(args))
    return got.value.cfg


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    found = bash_commands(RUNBOOK.read_text())
    assert sum(is_ray(c) for c in found) >= 8, "the runbook lost its ray commands"
    return found


@pytest.fixture(scope="module")
def flows(commands) -> dict:
    """Each flow's parsed config, by flow file (one command per flow in the runbook)."""
    out = {}
    for words in commands:
        call = flow_call(words)
        if call:
            path, args = call
            assert path not in out, f"{path} appears twice: the checks below would see only one"
            out[path] = parse_flow(path, args)
    return out


def test_ray_commands_parse_with_rays_cli(commands, monkeypatch):
    from ray.scripts.scripts import cli

    monkeypatch.chdir(ROOT)
    seen = set()
    for words in filter(is_ray, commands):
        cmd, ctx = click_parse(cli, words[1:])
        seen.add(ctx.command_path.split(" ", 1)[1])
        if ctx.command_path.endswith("job submit"):
            entrypoint = list(ctx.params["entrypoint"])
            if entrypoint[0] == "bgwsol":  # a bgwsol command (serve): its own parser must take the flags
                from bgwsol.serving.cli import build_parser

                build_parser().parse_args(entrypoint[1:])
                continue
            assert flow_call(entrypoint), f"job entrypoint is not a flow: {words}"
    assert {"up", "dashboard", "job submit", "down"} <= seen


def test_ray_start_commands_of_the_cluster_config_parse():
    from ray.scripts.scripts import cli

    cfg = yaml.safe_load(CLUSTER.read_text())
    started = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for line in cfg[key]:
            for part in line.split(";"):
                words = shlex.split(part)
                if words and words[0] == "ray":
                    _, ctx = click_parse(cli, words[1:])
                    if ctx.command_path.endswith(" start"):
                        started[key] = ctx.params
    # each node kind starts Ray: the head as the head, the workers joining the head's GCS
    assert started["head_start_ray_commands"]["head"] is True
    assert started["worker_start_ray_commands"]["head"] is False and started["worker_start_ray_commands"]["address"]


def test_every_runbook_flow_command_parses(flows):
    assert {"flows/shard_ilsvrc.py", "flows/shard_background.py", "flows/train_ilsvrc.py",
            "flows/tune_ilsvrc.py"} <= set(flows)


def test_localize_command_parses(commands):
    from bgwsol.serving.cli import build_parser

    calls = [w for w in commands if w[0].endswith("bgwsol")]
    assert calls
    for words in calls:
        build_parser().parse_args(words[1:])


def test_training_reuses_the_shards_the_etl_jobs_write(flows):
    from bgwsol.config import to_dict

    data, bg, train = flows["flows/shard_ilsvrc.py"], flows["flows/shard_background.py"], flows["flows/train_ilsvrc.py"]
    tune = flows["flows/tune_ilsvrc.py"]
    # the main job looks for <shards_dir>/<dataset> and <shards_dir>/background, made from the same sources ...
    assert f"{train.shards_dir}/{train.dataset}" == data.output and f"{train.shards_dir}/background" == bg.output
    assert (train.source, train.background) == (data.source, bg.source)
    # ... with the same ETL settings, or it shards the whole dataset again (bgwsol.workflows.main_job.prepare_shards)
    assert to_dict(train.etl) == to_dict(data.etl) == to_dict(bg.etl)
    assert (tune.shards, tune.background_shards) == (data.output, bg.output)


def gpu_jobs(flows) -> dict:
    return {"train": flows["flows/train_ilsvrc.py"], "tune": flows["flows/tune_ilsvrc.py"]}


def test_gpu_jobs_fit_the_clusters_gpu_nodes(flows):
    cfg = yaml.safe_load(CLUSTER.read_text())
    types = {t["node_config"]["InstanceType"]: t for t in cfg["available_node_types"].values()}
    for name, job in gpu_jobs(flows).items():
        c = job.cluster
        assert c.use_gpu and c.storage_path.startswith("s3://"), f"{name}: checkpoints must be on shared storage"
        assert c.loader_workers > 0, f"{name}: decoding on the training thread starves the GPU"
        assert 0 < c.loader_workers < c.cpus_per_worker
        # explicit: the default counts the CPUs present at start, none on a cluster scaled to zero
        assert job.search.max_concurrent > 0, f"{name}: --search.max_concurrent not set"
        for instance, (vcpus, gpus) in INSTANCES.items():
            assert gpus * c.cpus_per_worker <= vcpus, f"{name}: {gpus} workers do not fit one {instance}"
        most_gpus = max(types[i].get("max_workers", 0) * g for i, (_, g) in INSTANCES.items())
        assert job.search.max_concurrent * c.num_workers <= most_gpus, f"{name}: concurrent trials exceed the GPUs"


def test_kuberay_entrypoint_parses_and_fits_its_pods():
    job = next(d for d in yaml.safe_load_all(RAYJOB.read_text()) if d and d.get("kind") == "RayJob")
    path, args = flow_call(shlex.split(job["spec"]["entrypoint"]))
    cfg = parse_flow(path, args)
    c = cfg.cluster
    assert c.use_gpu and c.storage_path.startswith("s3://") and cfg.search.max_concurrent > 0
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus, cpus = int(limits["nvidia.com/gpu"]), int(limits["cpu"])
        assert gpus * c.cpus_per_worker <= cpus, f"{group['groupName']}: workers do not fit a pod"
        assert cfg.search.max_concurrent * c.num_workers <= group["maxReplicas"] * gpus
