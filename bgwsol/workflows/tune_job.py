"""The tune flow's job (``flows/tune_ilsvrc.py``): Ray Tune over bgwsol's settings on committed
shard sets, the best trial scored and registered, through the main job's search path."""

from __future__ import annotations

from dataclasses import dataclass, field

from bgwsol.config import RunConfig, option
from bgwsol.data.plan import RunData, plan_data
from bgwsol.ray_init import RayConfig, init_ray
from bgwsol.tracking.runs import TrackingConfig, resolve_uri
from bgwsol.training.cluster_resources import ResourceWatch
from bgwsol.training.distributed import ClusterConfig
from bgwsol.training.tune import SearchConfig
from bgwsol.workflows.preflight import cluster_problems, run_config_problems, search_problems

SEARCH_PREFIX = "tune-bgwsol"


@dataclass
class TuneJob:
    """Everything the tune flow needs; every field is a command-line flag."""

    shards: str = option("", "the dataset's shard set (s3://bucket/prefix or a folder with manifest.json; "
                             "flows/shard_ilsvrc.py writes one)")
    background_shards: str = option("", "the background shard set (flows/shard_background.py)")
    model_name: str = option("bgwsol-ilsvrc", "registered model name")
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


def tune_problems(job: TuneJob) -> list[str]:
    """Every problem with ``job`` that can be seen before any work, one line each."""
    problems = [] if job.shards and job.background_shards else [
        "--shards and --background_shards are required (flows/shard_ilsvrc.py, flows/shard_background.py write them)"]
    return (problems + run_config_problems(job.run, "run.") + cluster_problems(job.cluster, job.run.train.batch_size)
            + search_problems(job.search))


def run_tune(job: TuneJob) -> str:
    """The search (named by what it depends on: a rerun on the same shards and settings continues
    it, other ones start a new search), the best trial's best checkpoint scored as the main job
    scores it, and registered when a tracking server is configured; returns the lines to print."""
    # deferred: scoring and the registry (mlflow) would slow the flow's --help and preflight by ~2 s
    from bgwsol.workflows.fit_and_score import register_best, search_and_score

    init_ray(RayConfig())
    data = RunData(job.shards, job.background_shards)
    with ResourceWatch(job.cluster.resource_wait_s):  # says what the search waits for; stops it after the bound
        tuned = search_and_score(job.run, data, plan_data(data, False), job.cluster, job.tracking, job.search,
                                 prefix=SEARCH_PREFIX)
    outcome = tuned.outcome
    lines = [f"best trial {outcome.best_trial_run_name}: {outcome.best_params}",
             f"  {job.search.metric} = {outcome.best_metrics.get(job.search.metric)}; "
             f"{outcome.num_stopped_early} of {outcome.num_trials} trials stopped early by ASHA",
             f"  test MaxBoxAccV2 {tuned.final.test['main'].get('maxboxacc_v2', float('nan')):.1f} at the thresholds "
             "chosen on validation"]
    if resolve_uri(job.tracking):
        reg = register_best(tuned, resolve_uri(job.tracking), job.model_name)
        lines.append(f"registered {reg.name} version {reg.version}" + (" (now champion)" if reg.champion else
                                                                       " (champion unchanged: not better)"))
    return "\n".join(lines)
