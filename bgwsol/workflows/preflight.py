"""Checks of a whole configuration before any work: names, ranges, combinations and paths.

Every problem is one line naming the setting (as its flag), and all of them are reported at
once, so a typo in a backbone name is refused in a second instead of after the data is
sharded, a tracking server started and a worker group has failed (and been restarted).
"""

from __future__ import annotations

from bgwsol.config import RunConfig
from bgwsol.errors import path_problem

SELECT_METRICS = ("top1_loc", "gt_known_loc", "maxboxacc_v2", "boxacc_v2_at_tau", "top5_loc", "top1_cls")


def run_config_problems(cfg: RunConfig, prefix: str = "") -> list[str]:
    """One line per problem of ``cfg`` (flags shown as ``--<prefix><section>.<field>``)."""
    from bgwsol.methods import METHODS
    from bgwsol.models.backbones import BACKBONES
    from bgwsol.precision import precision_problem
    from bgwsol.models.weights import check_spec

    flag = f"--{prefix}"
    out: list[str] = []

    def need(ok: bool, setting: str, value, why: str) -> None:
        if not ok:
            out.append(f"{flag}{setting} {value!r}: {why}")

    m, d, t, e, meth = cfg.model, cfg.data, cfg.train, cfg.eval, cfg.method
    need(m.backbone in BACKBONES, "model.backbone", m.backbone, f"unknown backbone; known: {', '.join(sorted(BACKBONES))}")
    need(meth.name in METHODS, "method.name", meth.name, f"unknown method; known: {', '.join(sorted(METHODS))}")
    weights_problem = check_spec(m.weights, m.backbone if m.backbone in BACKBONES else None)
    if weights_problem:
        out.append(f"{flag}model.weights: {weights_problem}")
    need(m.frozen_layers >= 0, "model.frozen_layers", m.frozen_layers, "must be >= 0")
    need(0 <= m.fg_grad_scale <= 1, "model.fg_grad_scale", m.fg_grad_scale, "must be in [0, 1]")
    need(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    need(t.lr > 0, "train.lr", t.lr, "must be > 0")
    need(t.head_lr_mult > 0, "train.head_lr_mult", t.head_lr_mult, "must be > 0")
    need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    need(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    need(t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, "must be >= 0")
    need(t.eval_every >= 1, "train.eval_every", t.eval_every, "must be >= 1")
    need(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
    need(0 <= d.bg_ratio < 1, "data.bg_ratio", d.bg_ratio, "must be in [0, 1)")
    need(d.input_size >= 16, "data.input_size", d.input_size, "must be >= 16 pixels")
    need(0 < e.cam_curve_interval < 1, "eval.cam_curve_interval", e.cam_curve_interval, "must be in (0, 1)")
    need(len(e.iou_thresholds) > 0 and all(1 <= v <= 99 for v in e.iou_thresholds), "eval.iou_thresholds",
         list(e.iou_thresholds), "each must be in 1..99 (percent)")
    need(50 in e.iou_thresholds, "eval.iou_thresholds", list(e.iou_thresholds),
         "must include 50 (Top-1 / GT-known Loc are at IoU 50)")
    need(e.select_metric in SELECT_METRICS, "eval.select_metric", e.select_metric,
         f"unknown; one of {', '.join(SELECT_METRICS)}")
    need(e.scoremap_size >= 16, "eval.scoremap_size", e.scoremap_size, "must be >= 16")
    precision = precision_problem(e.precision, "cpu")
    need(not precision, "eval.precision", e.precision, precision)
    need(0 <= meth.alpha <= 1, "method.alpha", meth.alpha, "must be in [0, 1]")
    need(0 <= meth.cam_bg < meth.cam_fg <= 1, "method.cam_bg", meth.cam_bg,
         f"must be in [0, method.cam_fg={meth.cam_fg}) with cam_fg <= 1")
    need(0 < meth.class_prior < 1, "method.class_prior", meth.class_prior, "must be in (0, 1)")
    for name in ("lambda_bg", "lambda_obj", "lambda_fg", "lambda_mask", "lambda_area", "bas_lambda_ac",
                 "bas_lambda_area", "bas_lambda_fg"):
        need(getattr(meth, name) >= 0, f"method.{name}", getattr(meth, name), "must be >= 0")
    need(meth.mask_warmup_epochs >= 0, "method.mask_warmup_epochs", meth.mask_warmup_epochs, "must be >= 0")
    return out


def methods_problems(methods: list[str], source: str, background: str) -> list[str]:
    """Unknown names among ``methods``, and a method that needs background images with a real
    ``source`` but no ``background`` (the embedded synthetic dataset brings its own)."""
    from bgwsol.methods import METHODS

    out = []
    for name in methods:
        if name not in METHODS:
            out.append(f"method {name!r}: unknown; known: {', '.join(sorted(METHODS))}")
        elif METHODS[name].uses_background and source and not background:
            out.append(f"method {name!r} needs background images: set --background")
    return out


def sources_problems(sources, etl) -> list[str]:
    """The dataset, evaluation and background paths that must exist (``sources``: a
    :class:`~bgwsol.data.shards.jobs.DataSources`), and the ETL's ranges (``--etl.*``)."""
    from bgwsol.data.shards.etl import shard_config_problems
    from bgwsol.data.shards.jobs import dataset_source_problems

    missing = [p for p in (path_problem("--background", sources.background),
                           path_problem("--background_exclude", sources.background_exclude)) if p]
    return (dataset_source_problems(sources.dataset, sources.source, sources.eval_source) + missing
            + shard_config_problems(etl))


def cluster_problems(cluster, batch_size: int) -> list[str]:
    """Worker counts that cannot train ``batch_size`` (the global batch is split evenly over the workers)."""
    if cluster.num_workers < 1:
        return [f"--cluster.num_workers {cluster.num_workers}: must be >= 1"]
    if batch_size % cluster.num_workers:
        return [f"--run.train.batch_size {batch_size}: the global batch is split evenly over the workers, so it must "
                f"be a multiple of --cluster.num_workers {cluster.num_workers}"]
    return []


def compare_problems(job) -> list[str]:
    """Everything :func:`bgwsol.workflows.compare.compare` needs, checked before any work."""
    problems = run_config_problems(job.run, "run.") + methods_problems(list(job.methods), job.source, job.background)
    problems += sources_problems(job, job.etl) + cluster_problems(job.cluster,
                                                                                         job.run.train.batch_size)
    if not job.seeds:
        problems.append("--seeds: give at least one seed")
    if not job.methods:
        problems.append("--methods: give at least one method")
    if job.cluster.run_name:
        problems.append(f"--cluster.run_name {job.cluster.run_name!r}: the comparison names each run itself "
                        f"(method, seed and a hash of its configuration)")
    if job.tune:
        from bgwsol.config import replace
        from bgwsol.training.tune import SPACES
        from bgwsol.workflows.compare import plan_runs

        if job.tune < 0:
            problems.append(f"--tune {job.tune}: must be >= 0 (0: no search)")
        try:
            untunable = [m for m in plan_runs(list(job.methods)) if m not in SPACES]
        except ValueError:
            untunable = []  # unknown names are said above
        if untunable:
            problems.append(f"--tune: no search space for {', '.join(untunable)} (known: {', '.join(SPACES)})")
        problems += search_problems(replace(job.search, num_samples=max(1, job.tune)))
    return problems


def search_problems(search) -> list[str]:
    """The Tune search's budget and bounds (``--search.*``)."""
    out = []
    if search.num_samples < 1:
        out.append(f"--search.num_samples {search.num_samples}: must be >= 1")
    if search.mode not in ("max", "min"):
        out.append(f"--search.mode {search.mode!r}: must be max or min")
    if search.grace_period < 1 or search.reduction_factor < 2:
        out.append(f"--search.grace_period {search.grace_period} / --search.reduction_factor "
                   f"{search.reduction_factor}: must be >= 1 / >= 2")
    for name in ("lambda_bg", "lambda_mask", "lambda_fg", "lambda_area", "alpha", "lr", "bas_lambda_ac",
                 "bas_lambda_area", "bas_lambda_fg"):
        bounds = getattr(search, name)
        if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1] or (name not in ("lambda_area", "alpha")
                                                                      and bounds[0] <= 0):
            out.append(f"--search.{name} {' '.join(map(str, bounds))}: give two bounds, low <= high"
                       + ("" if name in ("lambda_area", "alpha") else ", low > 0 (searched log-uniformly)"))
    choices = {"head_lr_mult": lambda v: v > 0, "bas_warmup_epochs": lambda v: v >= 0,
               "bas_activation": lambda v: v in ("pixel", "pooled"), "bas_map": lambda v: v in ("class", "mean")}
    for name, valid in choices.items():
        values = getattr(search, name)
        if not values or not all(valid(v) for v in values):
            out.append(f"--search.{name} {' '.join(map(str, values))}: give at least one choice, each a valid "
                       f"{name} value")
    return out
