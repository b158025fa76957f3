"""Scoring a checkpoint on a Ray cluster: :func:`bgwsol.evaluation.scoring.evaluate_checkpoint`
fanned out over as many Ray tasks as the run had training workers, merged on the driver."""

from __future__ import annotations

from typing import Iterable, Protocol

from bgwsol.data.plan import DataPlan
from bgwsol.evaluation.scoring import FinalEvaluation


class Workers(Protocol):
    """The resources of a run's training workers (:class:`bgwsol.training.distributed.ClusterConfig` has them)."""

    num_workers: int
    cpus_per_worker: float
    use_gpu: bool


def _score_part(state: dict, plan: DataPlan, rank: int, world: int, post_hoc: list[str], threads: int):
    """One task's share of :func:`score_on_workers`: its rank's validation and test accumulators."""
    import ray
    import torch

    from bgwsol.data.plan import Worker
    from bgwsol.evaluation.scoring import evaluate_checkpoint

    torch.set_num_threads(threads)
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return evaluate_checkpoint(state, plan, Worker(rank, world, device), post_hoc)


def score_on_workers(state: dict, plan: DataPlan, cluster: Workers, post_hoc: Iterable[str] = ()
                     ) -> FinalEvaluation:
    """Score checkpoint ``state`` once: validation (where every map variant chooses its
    thresholds) and test at those thresholds, each split divided over ``cluster.num_workers``
    Ray tasks with the resources of a training worker (a GPU each with ``use_gpu``); the
    ranks' accumulators are merged here, as validation's are during training. The same
    numbers as :func:`bgwsol.evaluation.scoring.score_here` (tests/test_engine.py)."""
    import ray

    from bgwsol.checkpoint import inference_state
    from bgwsol.evaluation.scoring import merge_evaluations, summarize

    task = ray.remote(num_cpus=cluster.cpus_per_worker, num_gpus=1 if cluster.use_gpu else 0)(_score_part)
    state_ref = ray.put(inference_state(state))
    world = cluster.num_workers
    parts = ray.get([task.remote(state_ref, plan, rank, world, list(post_hoc), max(1, int(cluster.cpus_per_worker)))
                     for rank in range(world)])
    return summarize(merge_evaluations([val for val, _ in parts]), merge_evaluations([test for _, test in parts]))
