"""One method's run as the main job's baseline and the comparison take it (trained by Ray Train,
its best checkpoint by validation, then scored on the workers), and the one search path the main
job, the tune flow and the comparison share (search, best trial, score, register)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bgwsol.config import RunConfig, to_dict
from bgwsol.data.plan import DataPlan, RunData, plan_data
from bgwsol.evaluation.on_ray import score_on_workers
from bgwsol.evaluation.scoring import FinalEvaluation
from bgwsol.methods import build_method
from bgwsol.tracking.model_registry import Registration, log_and_register
from bgwsol.training.distributed import ClusterConfig, best_checkpoint, fit, identity_tag, run_history
from bgwsol.training.tune import PARAMS, SearchConfig, TuneOutcome, params_of, run_search


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


@dataclass
class SearchScored:
    """A finished search and its best trial's best checkpoint, scored (:func:`search_and_score`)."""

    outcome: TuneOutcome          # the search: every trial, the best one's settings and metrics
    state: dict                   # the best trial's best checkpoint by validation
    metrics: dict                 # that checkpoint's reported metrics (``score``: validation select_metric)
    history: list[dict]           # every epoch of the best trial's run
    final: FinalEvaluation        # thresholds chosen on validation, the test split read once


def search_name(prefix: str, base: RunConfig, search: SearchConfig, digest: str, background: str = "") -> str:
    """``<prefix>-<8 hex digits>`` of what a search depends on, as a run's name is made
    (:func:`~bgwsol.training.distributed.identity_tag`): the configuration it starts from, the data
    its trials train on (``digest``: the dataset manifest's SHA-256; ``background``: the background
    set's, where the method uses one) and the search's own settings. A rerun with the same ones
    continues the search (Tune's restore, finished trials kept); other data or settings start a
    new one, never a restored search that saw other data."""
    return f"{prefix}-{identity_tag(base, digest + json.dumps(to_dict(search), sort_keys=True), background)}"


def search_and_score(base: RunConfig, data: RunData, plan: DataPlan, cluster: ClusterConfig, tracking, search: SearchConfig,
                     prefix: str, params: dict[str, str] = PARAMS, post_hoc: list[str] | tuple[str, ...] = ()
                     ) -> SearchScored:
    """The one search path of the main job, the tune flow and the comparison: Ray Tune over
    ``params`` named by :func:`search_name`, the configured settings as the first trial, the
    best trial by validation, its best checkpoint by validation, scored on the workers on
    ``plan`` as the main job scores (``post_hoc`` maps on the same model)."""
    trained_on = plan_data(data, build_method(base.method).uses_background)  # what the trials read
    name = search_name(prefix, base, search, trained_on.digest, trained_on.background_digest)
    outcome = run_search(base, data, cluster, tracking, search, name=name,
                         points_to_evaluate=[params_of(base, params)], params=params)
    best = outcome.best_run()
    state, metrics = best_checkpoint(best)
    return SearchScored(outcome, state, metrics, run_history(best), score_on_workers(state, plan, cluster, post_hoc))


def register_best(scored: SearchScored, tracking_uri: str, model_name: str) -> Registration:
    """Register the search's best checkpoint as ``model_name`` with the thresholds it chose on
    validation; ``champion`` moves only if it beats the current one on validation."""
    return log_and_register(scored.state, tracking_uri=tracking_uri, run_id=scored.state["mlflow_run_id"],
                            name=model_name, metric=scored.metrics["score"], taus=scored.final.taus["main"],
                            mask_tau=scored.final.mask_taus.get("main"))
