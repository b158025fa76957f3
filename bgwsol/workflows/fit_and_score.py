"""One method's run as the main job's baseline and the comparison take it: trained by Ray Train,
its best checkpoint by validation, then scored on the workers."""

from __future__ import annotations

from bgwsol.config import RunConfig
from bgwsol.data.plan import DataPlan, RunData
from bgwsol.evaluation.on_ray import score_on_workers
from bgwsol.evaluation.scoring import FinalEvaluation
from bgwsol.training.distributed import ClusterConfig, best_checkpoint, fit, run_history


def fit_and_score(cfg: RunConfig, data: RunData, plan: DataPlan, cluster: ClusterConfig, tracking=None,
                  post_hoc: list[str] | tuple[str, ...] = ()) -> tuple[dict, list[dict], FinalEvaluation]:
    """:func:`~bgwsol.training.distributed.fit` (named by ``run_name_of`` unless
    ``cluster.run_name``; a rerun continues it), its best checkpoint by validation, then
    :func:`~bgwsol.evaluation.on_ray.score_on_workers` on ``plan`` (``post_hoc`` maps on the same
    model). Returns ``(checkpoint state, every epoch's history, FinalEvaluation)``."""
    result = fit(cfg, data, cluster, tracking=tracking)
    state, _ = best_checkpoint(result)
    return state, run_history(result), score_on_workers(state, plan, cluster, post_hoc)
