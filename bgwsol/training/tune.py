"""Ray Tune over the loss weights, the map mix and the learning rate (Optuna search + ASHA).

Train V2 style: each trial is a function that builds and fits its own ``TorchTrainer``
(:func:`bgwsol.training.distributed.fit`) with ``TuneReportCallback``, so every epoch's validation
metrics reach Tune and ASHA can stop a weak trial early. The operating box threshold of
each trial is chosen on validation (``val_tau50``, from the MaxBoxAcc sweep) and reported with
it. Each trial logs a nested MLflow run under one parent run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bgwsol.config import RunConfig, option, replace, to_dict
from bgwsol.training.distributed import ClusterConfig, fit, load_result
from bgwsol.data.plan import RunData
from bgwsol.tracking.runs import TrackingConfig

log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    """Search space (log-uniform between the bounds unless said otherwise) and budget."""

    num_samples: int = option(8, "trials")
    max_concurrent: int = option(0, "trials at once; 0: as many as the cluster's CPUs fit")
    metric: str = option("val_top1_loc", "metric the search optimizes (a key of the per-epoch report)")
    mode: str = option("max", "max or min")
    grace_period: int = option(1, "epochs before ASHA may stop a trial")
    reduction_factor: int = option(2, "ASHA keeps the best 1/reduction_factor at each rung")
    lambda_bg: tuple[float, ...] = option((0.1, 3.0), "bounds of the background-term weight")
    lambda_mask: tuple[float, ...] = option((0.05, 2.0), "bounds of the CAM-to-mask weight")
    lambda_fg: tuple[float, ...] = option((0.1, 2.0), "bounds of the foreground-classification weight")
    lambda_area: tuple[float, ...] = option((0.0, 0.5), "bounds of the area weight (uniform)")
    alpha: tuple[float, ...] = option((0.3, 1.0), "bounds of the map mix alpha (uniform)")
    lr: tuple[float, ...] = option((0.01, 0.2), "bounds of the learning rate")
    head_lr_mult: tuple[float, ...] = option((1.0, 10.0), "choices of the added layers' learning-rate "
                                                          "multiple (compare_methods --tune)")
    bas_lambda_ac: tuple[float, ...] = option((0.3, 3.0), "bounds of BAS's activation-constraint weight")
    bas_lambda_area: tuple[float, ...] = option((0.5, 2.5), "bounds of BAS's area weight (the authors: 0.7-2.5)")
    bas_lambda_fg: tuple[float, ...] = option((0.1, 2.0), "bounds of BAS's foreground-guidance weight (the authors: 0.5-1)")
    bas_warmup_epochs: tuple[int, ...] = option((0, 1, 2), "choices of BAS's warm-up epochs (the authors: 0)")
    bas_activation: tuple[str, ...] = option(("pixel", "pooled"), "choices of BAS's activation (method.bas_activation)")
    bas_map: tuple[str, ...] = option(("class", "mean"), "choices of BAS's localization map (method.bas_map)")
    seed: int = option(0, "search seed")


# the main job's search: bgwsol's loss weights, its map mix and the learning rate (Tune name -> setting)
PARAMS = {"lambda_bg": "method.lambda_bg", "lambda_mask": "method.lambda_mask", "lambda_fg": "method.lambda_fg",
          "lambda_area": "method.lambda_area", "alpha": "method.alpha", "lr": "train.lr"}
# each trained method's own settings, searched with the same budget by compare_methods --tune
SPACES: dict[str, dict[str, str]] = {
    "cam": {"lr": "train.lr", "head_lr_mult": "train.head_lr_mult"},
    "bas": {"lr": "train.lr", "head_lr_mult": "train.head_lr_mult", "bas_lambda_ac": "method.bas_lambda_ac",
            "bas_lambda_area": "method.bas_lambda_area", "bas_lambda_fg": "method.bas_lambda_fg",
            "bas_warmup_epochs": "method.bas_warmup_epochs", "bas_activation": "method.bas_activation",
            "bas_map": "method.bas_map"},
    "bgwsol": {**PARAMS, "head_lr_mult": "train.head_lr_mult"},
}
SETTINGS = {k: path for space in SPACES.values() for k, path in space.items()}
UNIFORM = {"lambda_area", "alpha"}  # sampled uniformly between the bounds (others: log-uniform)
CHOICES = {"head_lr_mult", "bas_warmup_epochs", "bas_activation", "bas_map"}  # one of the listed values


def param_space(search: SearchConfig, params: dict[str, str] = PARAMS) -> dict:
    """Tune's space over ``params`` (Tune name -> setting) with ``search``'s bounds and choices."""
    from ray import tune

    def sampler(k: str):
        if k in CHOICES:
            return tune.choice(list(getattr(search, k)))
        return (tune.uniform if k in UNIFORM else tune.loguniform)(*getattr(search, k))

    return {k: sampler(k) for k in params}


def trial_config(base: RunConfig, params: dict) -> RunConfig:
    """``base`` with the trial's sampled values (each cast to its setting's type)."""
    from bgwsol.config import flatten

    flat = flatten(to_dict(base))
    return replace(base, **{SETTINGS[k]: type(flat[SETTINGS[k]])(v) for k, v in params.items() if k in SETTINGS})


def params_of(cfg: RunConfig, params: dict[str, str] = PARAMS) -> dict:
    """The values of ``params`` in ``cfg`` (the inverse of :func:`trial_config`), e.g. to try the defaults first."""
    from bgwsol.config import flatten

    flat = flatten(to_dict(cfg))
    return {k: flat[path] for k, path in params.items()}


def _trial(config: dict, *, base: RunConfig, data: RunData, cluster: ClusterConfig, tracking: TrackingConfig,
           parent_run_id: str | None, tune_name: str) -> None:
    """One Tune trial: fit a TorchTrainer with the sampled weights; metrics flow to Tune per epoch."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    cfg, name = trial_config(base, config), f"{tune_name}-{trial_id}"
    finished = _finished_run_metrics(cluster.storage_path, name, cfg.train.epochs)
    if finished is not None:
        # the job stopped after Ray Train committed the run's last epoch but before Tune recorded the
        # trial's end: a restored trial would train nothing and report nothing, so it reports that epoch
        tune.report(finished)
        return
    fit(cfg, data, replace(cluster, run_name=name), tracking=tracking, callbacks=[TuneReportCallback()],
        parent_run_id=parent_run_id)


def _finished_run_metrics(storage_path: str, name: str, epochs: int) -> dict | None:
    """The last epoch's metrics of Ray Train run ``name`` if it has committed all ``epochs``, else None."""
    try:
        metrics = load_result(storage_path, name).metrics or {}
    except Exception:  # noqa: BLE001 - no run there yet (or not one Ray Train can read): train it
        return None
    return dict(metrics) if metrics.get("epoch", -1) >= epochs - 1 else None


def _epochs_trained(result: dict) -> int:
    """Epochs a trial's run has trained, from its last Tune result: the run's own epoch (0-based)
    + 1, not Tune's report count, which restarts when a restored trial reports a run that had
    already committed its last epoch (:func:`_finished_run_metrics`)."""
    if "epoch" in result:
        return int(result["epoch"]) + 1
    return int(result.get("training_iteration", 0))


def concurrency(cluster: ClusterConfig, search: SearchConfig) -> int:
    """Trials that fit the cluster at once: its CPUs over the CPUs one trial's workers reserve."""
    import ray

    if search.max_concurrent:
        return search.max_concurrent
    per_trial = cluster.num_workers * cluster.cpus_per_worker
    return max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))


@dataclass
class TuneOutcome:
    best_params: dict
    best_metrics: dict
    best_trial_run_name: str
    num_trials: int
    num_stopped_early: int
    parent_run_id: str | None
    storage_path: str
    results: list = field(default_factory=list)

    def best_run(self):
        """Ray Train ``Result`` of the best trial (its checkpoints and metrics)."""
        from bgwsol.training.distributed import load_result

        return load_result(self.storage_path, self.best_trial_run_name)


def trial_lines(total: int, metric: str, mode: str, epochs: int, tune_name: str = ""):
    """A Tune callback (on the driver) logging one line as each trial ends: its best ``metric``,
    whether ASHA stopped it before ``epochs``, how many of ``total`` trials are done, and the
    best so far. With ``tune_name`` it also makes sure that the trial's Ray Train run (named
    ``<tune_name>-<trial id>``) holds nothing afterwards, however it ended
    (:func:`~bgwsol.training.cluster_resources.release_in_background`)."""
    from ray.tune import Callback

    from bgwsol.training.cluster_resources import release_in_background

    better = max if mode == "max" else min

    class TrialLines(Callback):
        def __init__(self) -> None:
            self.best_of: dict[str, float] = {}
            self.done: set[str] = set()

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if metric in result:
                value = float(result[metric])
                self.best_of[trial.trial_id] = better(value, self.best_of.get(trial.trial_id, value))

        def _ended(self, trial, how: str, trials) -> None:
            if tune_name:
                release_in_background(f"{tune_name}-{trial.trial_id}")
            # trials that ended before a restore count too: Tune hands every trial to the callback
            self.done |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id}
            trained = _epochs_trained(trial.last_result or {})
            mine = self.best_of.get(trial.trial_id)
            leader = better(self.best_of.items(), key=lambda kv: kv[1]) if self.best_of else None
            log.info("search: trial %s %s after %d epoch(s)%s; %d of %d trials done%s", trial.trial_id, how, trained,
                     f", best {metric} {mine:.1f}" if mine is not None else "", len(self.done), total,
                     f", best so far {leader[1]:.1f} (trial {leader[0]})" if leader else "")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            trained = _epochs_trained(trial.last_result or {})
            self._ended(trial, "finished" if trained >= epochs else "stopped by ASHA", trials)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._ended(trial, "failed", trials)

    return TrialLines()


def run_search(base: RunConfig, data: RunData, cluster: ClusterConfig, tracking: TrackingConfig, search: SearchConfig,
               name: str = "tune", points_to_evaluate: list[dict] | None = None,
               params: dict[str, str] = PARAMS) -> TuneOutcome:
    """Optuna + ASHA over ``params`` (default :data:`PARAMS`, bgwsol's; :data:`SPACES` has each
    method's); returns the best trial (by ``search.metric`` at its best epoch).

    ``points_to_evaluate`` (dicts over :data:`PARAMS`) are tried first, e.g. the defaults. A
    search ``name`` already under the storage path is restored (Tune's own restore), so a
    stopped job's rerun trains no finished trial again; ``name`` must therefore change with
    whatever the search depends on (the main job puts a hash of it in the name).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from bgwsol.data.storage import Location, check_access
    from bgwsol.tracking.run_logger import RunLogger
    from bgwsol.tracking.runs import check_tracking

    check_tracking(tracking)
    # trials run with the trial folder as working directory: pin relative storage paths here
    cluster = replace(cluster, storage_path=check_access(cluster.storage_path, writable=True).url)
    parent = RunLogger(tracking, name)
    parent_id = parent.start(params={f"search.{k}": v for k, v in to_dict(search).items()})
    loc = Location.parse(cluster.storage_path)
    trainable = tune.with_resources(  # the trial only drives its TorchTrainer, whose workers hold the CPUs
        tune.with_parameters(_trial, base=base, data=data, cluster=cluster, tracking=tracking,
                             parent_run_id=parent_id, tune_name=name),
        {"CPU": 0, "memory": 1})
    experiment = loc.join(name)
    if tune.Tuner.can_restore(experiment.fs_path, storage_filesystem=loc.filesystem()):
        # a stopped search continues: finished trials are kept, unfinished and errored ones resume
        # from their Ray Train checkpoints (same trial ids, so the same run names), new ones fill up
        log.info("search %s exists under %s: continuing its trials", name, loc.url)
        tuner = tune.Tuner.restore(experiment.fs_path, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space(search, params), storage_filesystem=loc.filesystem())
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(search, params),
            tune_config=tune.TuneConfig(
                metric=search.metric, mode=search.mode, num_samples=search.num_samples,
                max_concurrent_trials=concurrency(cluster, search),
                search_alg=OptunaSearch(points_to_evaluate=points_to_evaluate, seed=search.seed),
                # max_t one past the last epoch: a trial that trains every epoch ends by itself, after its
                # fit() has shut its worker group down. At max_t Tune would stop it on its last report and
                # end the trial's process under a controller still winding down, leaving its placement
                # group to Ray Train's cleaner actor, which fails when a machine runs two Rays (#21). The
                # rungs below are the same; release_in_background covers trials ASHA does stop.
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=base.train.epochs + 1,
                                        grace_period=search.grace_period, reduction_factor=search.reduction_factor)),
            run_config=tune.RunConfig(name=name, storage_path=loc.fs_path, storage_filesystem=loc.filesystem(),
                                      callbacks=[trial_lines(search.num_samples, search.metric, search.mode,
                                                                 base.train.epochs, name)]))
    grid = tuner.fit()
    best = grid.get_best_result(metric=search.metric, mode=search.mode, scope="all")
    results = list(grid)
    stopped = sum(1 for r in results if r.metrics and r.metrics.get("epoch", -1) + 1 < base.train.epochs)
    chosen = {k: best.config[k] for k in params}
    parent.log_metrics({f"best_{search.metric}": best.metrics.get(search.metric, float("nan"))}, 0)
    parent.set_tags({f"best.{k}": v for k, v in chosen.items()})
    parent.end()
    return TuneOutcome(chosen, dict(best.metrics), f"{name}-{best.metrics.get('trial_id', '')}", len(results), stopped,
                       parent_id, cluster.storage_path, results)
