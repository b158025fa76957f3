"""Ray Tune over bgwsol's loss weights, map mix and learning rate on a shard set; registers the best.

Each trial is a 2-worker (``--cluster.num_workers``) Ray Train run; Optuna proposes, ASHA stops
weak trials after ``--search.grace_period`` epochs. Every trial is a nested MLflow run under
one parent run; the best trial's best checkpoint is registered as ``--model_name`` with its
validation threshold, and ``champion`` moves to it only if it beats the current champion.

    python flows/tune_ilsvrc.py --shards s3://b/shards/ilsvrc \\
        --background_shards s3://b/shards/background --tracking.tracking_uri http://mlflow:5000 \\
        --search.num_samples 32 --cluster.num_workers 4 --cluster.use_gpu --cluster.storage_path s3://b/runs
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from bgwsol.config import RunConfig, option
from bgwsol.training.distributed import ClusterConfig
from bgwsol.tracking.runs import TrackingConfig
from bgwsol.training.tune import SearchConfig
from bgwsol.errors import run_entry_point


@dataclass
class TuneJob:
    shards: str = option("", "the dataset's shard set (s3://bucket/prefix or a folder with manifest.json; "
                             "flows/shard_ilsvrc.py writes one)")
    background_shards: str = option("", "the background shard set (flows/shard_background.py)")
    model_name: str = option("bgwsol-ilsvrc", "registered model name")
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


def tune_problems(job: TuneJob) -> list[str]:
    from bgwsol.workflows.preflight import cluster_problems, run_config_problems, search_problems

    problems = [] if job.shards and job.background_shards else [
        "--shards and --background_shards are required (flows/shard_ilsvrc.py, flows/shard_background.py write them)"]
    return (problems + run_config_problems(job.run, "run.") + cluster_problems(job.cluster, job.run.train.batch_size)
            + search_problems(job.search))


def main(argv: list[str] | None = None) -> int:
    from bgwsol.flow import parse_job, run_job

    job, _ = parse_job(TuneJob, TuneJob(), __doc__, argv)
    return run_job(job, tune_problems(job), run_tune, log_dir=None, name="tune")


def run_tune(job: TuneJob) -> str:
    from bgwsol.ray_init import RayConfig, init_ray
    from bgwsol.training.cluster_resources import ResourceWatch
    from bgwsol.evaluation.on_ray import score_on_workers
    from bgwsol.training.distributed import best_checkpoint
    from bgwsol.tracking.model_registry import log_and_register
    from bgwsol.tracking.runs import resolve_uri
    from bgwsol.data.plan import RunData, plan_data
    from bgwsol.training.tune import run_search

    init_ray(RayConfig())
    data = RunData(job.shards, job.background_shards)
    with ResourceWatch(job.cluster.resource_wait_s):  # says what the search waits for; stops it after the bound
        outcome = run_search(job.run, data, job.cluster, job.tracking, job.search, name="tune-bgwsol")
        lines = [f"best trial {outcome.best_metrics['trial_id']}: {outcome.best_params}",
                 f"  {job.search.metric} = {outcome.best_metrics.get(job.search.metric)}; "
                 f"{outcome.num_stopped_early} of {outcome.num_trials} trials stopped early by ASHA"]
        if not resolve_uri(job.tracking):
            return "\n".join(lines)
        state, metrics = best_checkpoint(outcome.best_run())
        # scored as the main job scores it: thresholds chosen on validation by the evaluation stage
        final = score_on_workers(state, plan_data(data, False), job.cluster)
    reg = log_and_register(state, tracking_uri=resolve_uri(job.tracking), run_id=state["mlflow_run_id"],
                           name=job.model_name, metric=metrics["score"], taus=final.taus["main"],
                           mask_tau=final.mask_taus.get("main"))
    lines.append(f"  test MaxBoxAccV2 {final.test['main'].get('maxboxacc_v2', float('nan')):.1f} at the thresholds "
                 "chosen on validation")
    lines.append(f"registered {reg.name} version {reg.version}" + (" (now champion)" if reg.champion else
                                                                   " (champion unchanged: not better)"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "tune_ilsvrc"))
