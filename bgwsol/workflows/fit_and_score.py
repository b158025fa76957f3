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
    return score_best_checkpoint(fit(cfg, data, cluster, tracking=tracking), plan, cluster, post_hoc)


def score_best_checkpoint(result, plan: DataPlan, cluster: ClusterConfig, post_hoc: list[str] | tuple[str, ...] = ()
                          ) -> tuple[dict, list[dict], FinalEvaluation]:
    """A finished Ray Train run's ``result`` (from :func:`fit`, or a Tune search's best trial):
    its best checkpoint by validation, every epoch's history, and that checkpoint scored on the
    workers (``post_hoc`` maps on the same model)."""
    state, _ = best_checkpoint(result)
    return state, run_history(result), score_on_workers(state, plan, cluster, post_hoc)
