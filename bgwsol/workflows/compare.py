"""Run several methods x seeds on the same data and summarize test metrics as one table.

Every method trains on the same shards, backbone, schedule and evaluator, through the main
job's own path (a Ray Train run of the training engine, evaluation on the workers); each run
chooses its checkpoint and its thresholds on the validation split and reads the test split
once. Post-hoc methods (``Method.post_hoc_of``, e.g. Eigen-CAM on CAM) are not trained: they
are scored on the runs of the method they are computed from, in the same passes over
validation and test. Runs proceed side by side as far as the cluster allows. With an MLflow
tracking URI the table goes to one parent run with a child run per method.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path


from bgwsol.config import RunConfig, flatten, option, replace, to_dict
from bgwsol.data.shards.etl import ShardConfig
from bgwsol.data.shards.jobs import DataSources
from bgwsol.workflows.table import COLUMNS, RANK_METRIC, Line, markdown, ranking
from bgwsol.ray_init import RayConfig
from bgwsol.tracking.runs import TrackingConfig
from bgwsol.training.distributed import ClusterConfig
from bgwsol.training.tune import SearchConfig
from bgwsol.data.plan import DataPlan, RunData
from bgwsol.evaluation.scoring import FinalEvaluation


@dataclass
class RunResult:
    """What a finished run reports: ``val``/``test`` metric dicts per map variant, the main map's
    thresholds from validation, its epoch history, and the folder of its files."""

    output_dir: Path
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    taus: dict[int, float]
    history: list[dict]                         # every epoch of the run
    final: FinalEvaluation | None = None       # every variant's thresholds, curves and per-class scores
    class_names: list[str] = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # variant -> ExampleMaps, for report.html
    best_epoch: int | None = None                 # the epoch of the checkpoint that was scored
    settings: dict = field(default_factory=dict)  # with --tune: the searched settings the run ended with

log = logging.getLogger(__name__)

TABLE_METRICS = tuple(COLUMNS)
OURS = "bgwsol"  # the report's example images are ranked by this method's IoU


@dataclass(frozen=True)
class Row:
    """One line of the table: the map ``variant`` of the runs of the trained method ``trained``."""

    key: str      # stable name for JSON and MLflow: "cam", "eigencam", "bgwsol/mask_only"
    label: str    # what the table shows
    method: str   # the requested method this line belongs to
    trained: str  # the method whose runs are scored
    variant: str  # the map variant in RunResult.test


def plan_runs(methods: list[str]) -> dict[str, list[str]]:
    """``{trained method: [post-hoc methods scored on its runs]}`` in the order asked.

    A post-hoc method brings the method it is computed from into the plan when it is missing.
    Unknown names raise with the known ones listed.
    """
    from bgwsol.methods import METHODS

    plan: dict[str, list[str]] = {}
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
        source = METHODS[name].post_hoc_of
        if source is None:
            plan.setdefault(name, [])
        elif name not in plan.setdefault(source, []):
            plan[source].append(name)
    return plan


@dataclass
class Comparison:
    """Test metrics per trained method per seed; ``post_hoc`` maps a post-hoc method to its source."""

    results: dict[str, list[RunResult]]
    post_hoc: dict[str, str] = field(default_factory=dict)
    methods: list[str] | None = None  # the requested order; default: trained methods, then post-hoc ones

    def table_rows(self) -> list[Row]:
        rows: list[Row] = []
        order = self.methods or [*self.results, *self.post_hoc]
        for method in order:
            if method in self.post_hoc:
                source = self.post_hoc[method]
                rows.append(Row(method, f"{method} (post-hoc, {source} model)", method, source, method))
                continue
            rows.append(Row(method, method, method, method, "main"))
            runs = self.results[method]
            for variant in runs[0].test:
                if variant == "main" or variant in self.post_hoc:
                    continue
                rows.append(Row(f"{method}/{variant}", f"{method} ({variant.replace('_', ' ')})", method, method, variant))
        # methods trained only as the source of a post-hoc one still get their line
        for method in self.results:
            if method not in order:
                rows.insert(0, Row(method, method, method, method, "main"))
        return rows

    def lines(self) -> list[Line]:
        """The table's lines (:mod:`bgwsol.workflows.table`): each row's metrics over its seeds;
        a method's extra map variants (``bgwsol (mask only)``) are not ranked."""
        out = []
        for row in self.table_rows():
            runs = self.results[row.trained]
            per_seed = {m: [r.test[row.variant][m] for r in runs if m in r.test.get(row.variant, {})]
                        for m in TABLE_METRICS}
            out.append(Line(row.label, row.key, {m: v for m, v in per_seed.items() if v},
                            ranked=row.variant == "main" or row.key in self.post_hoc))
        return out

    def rows(self) -> list[dict]:
        """Per table line: ``method`` (label), ``key``, ``seeds``, metric -> ``(mean, std)`` over
        seeds (population std), and ``per_seed`` metric -> list of values."""
        return [line.to_json() for line in self.lines()]

    def ranking(self) -> str:
        """Which method ranks first on MaxBoxAccV2, and by how much (:func:`bgwsol.workflows.table.ranking`)."""
        return ranking(self.lines())

    def markdown(self) -> str:
        """The table (mean ± std over seeds, test split, percent; best method mean per column in
        bold), followed by the ranking line and, for a tuned comparison, the settings each run ended with."""
        return markdown(self.lines()) + self.settings_markdown()

    def settings_markdown(self) -> str:
        """Per trained method and seed, the settings its search chose on validation ("" untuned)."""
        lines = [f"- {method}: " + "; ".join(f"seed {r.output_dir.name.rsplit('-seed', 1)[-1]}: "
                                             f"{settings_text(r.settings)}" for r in runs)
                 for method, runs in self.results.items() if any(r.settings for r in runs)]
        return "\n\nSettings each search chose on validation:\n" + "\n".join(lines) if lines else ""


# ----------------------------------------------------------------------------- running


@dataclass
class CompareConfig(DataSources):
    """A comparison: the data (as the main job takes it), the methods and seeds, and one run config."""

    output_dir: str = option("outputs/compare_methods", "the table, and a folder per (method, seed)")
    methods: tuple[str, ...] = option(("cam", "eigencam", "bas", "bgwsol"),
                                      "methods to compare; post-hoc ones (eigencam) are scored on their source's runs")
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds per method")
    tune: int = option(0, "trials of a Ray Tune search (Optuna + ASHA) per trained method and seed over that method's "
                          "own settings (bgwsol.training.tune.SPACES; the first trial is the configured settings), "
                          "chosen on validation as the main job chooses; 0: train the configured settings once")
    search: SearchConfig = field(default_factory=SearchConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=lambda: ClusterConfig(num_workers=1, storage_path=""))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    etl: ShardConfig = field(default_factory=ShardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    verbose: bool = option(False, "show Ray's and MLflow's own output on the console too (it always goes to "
                                  "<output_dir>/logs/)")


def run_one(cfg: RunConfig, data: RunData, plan: DataPlan, cluster: ClusterConfig, post_hoc: list[str],
            out_dir: str) -> RunResult:
    """One (method, seed) through the main job's path (``plan``: the shard lists scoring reads): a Ray Train run of ``cfg`` (resumed when
    its run name exists), its best checkpoint by validation, then validation (thresholds per map)
    and test on the workers; ``post_hoc`` maps are scored on the same model in the same passes.
    Writes config.yaml, history.jsonl, results.json and overlays_test.png into ``out_dir``."""
    from bgwsol.workflows.fit_and_score import fit_and_score

    state, history, final = fit_and_score(cfg, data, plan, cluster, post_hoc=post_hoc)
    return _run_result(cfg, state, history, final, plan, out_dir)


def _run_result(cfg: RunConfig, state: dict, history: list[dict], final: FinalEvaluation, plan: DataPlan,
                out_dir: str, settings: dict | None = None) -> RunResult:
    """A scored run's files (config.yaml, history.jsonl, results.json, overlays_test.png) and result."""
    from bgwsol.evaluation.scoring import score_examples
    from bgwsol.workflows.report import class_names, examples_grid
    from bgwsol.workflows.run_files import write_run_files

    examples = score_examples(state, {v: taus[50] for v, taus in final.taus.items() if 50 in taus}, plan.test)
    write_run_files(out_dir, cfg, {**state, "history": history}, final,
                    examples_grid(examples, plan.test, cfg.data.input_size))
    return RunResult(Path(out_dir), final.val, final.test, final.taus["main"], history, final,
                     class_names(state), examples, state.get("epoch"), dict(settings or {}))


def tune_one(cfg: RunConfig, data: RunData, plan: DataPlan, cluster: ClusterConfig, tracking: TrackingConfig,
             search: SearchConfig, post_hoc: list[str], out_dir: str) -> RunResult:
    """One (method, seed) with a search: Ray Tune over the method's own settings
    (:data:`bgwsol.training.tune.SPACES`, ``search.num_samples`` trials, the configured settings
    first), the best trial by validation (as the main job picks it), its best checkpoint by
    validation, then validation (thresholds) and test once, as :func:`run_one` scores: the main
    job's search path (:func:`~bgwsol.workflows.fit_and_score.search_and_score`)."""
    from bgwsol.training.tune import SPACES, trial_config
    from bgwsol.workflows.fit_and_score import search_and_score

    tuned = search_and_score(cfg, data, plan, cluster, tracking, search,
                             prefix=f"tune-{cfg.method.name}-seed{cfg.train.seed}", params=SPACES[cfg.method.name],
                             post_hoc=post_hoc)
    chosen = tuned.outcome.best_params
    return _run_result(trial_config(cfg, chosen), tuned.state, tuned.history, tuned.final, plan, out_dir, chosen)


def tune_space(method: str) -> list[str]:
    """The settings ``compare_methods --tune`` searches for ``method``."""
    from bgwsol.training.tune import SPACES

    return list(SPACES[method].values())


def settings_text(settings: dict) -> str:
    """``lr 0.0123, head_lr_mult 10.0, bas_map mean`` (floats to 3 significant digits)."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items())


def outputs_text(output_dir: str | Path, methods: list[str], seed: int) -> str:
    """Where a comparison's files are (what the comparison flows print at the end)."""
    out = Path(output_dir)
    lines = [f"\nOutputs: {out.resolve()}", f"  table:    {out / 'comparison.md'} and comparison.json"]
    lines += [f"  {m}: {out / f'{m}-seed{seed}'}/{{results.json,history.jsonl,overlays_test.png,config.yaml}}"
              for m in methods]
    return "\n".join(lines)


def runs_at_once(cluster: ClusterConfig) -> int:
    """Runs whose workers fit the cluster together (its CPUs, or GPUs with ``use_gpu``): more would
    only start drivers that wait, each holding a Python process with torch loaded."""
    import ray

    resources = ray.cluster_resources()
    if cluster.use_gpu:
        return max(1, int(resources.get("GPU", 1) // cluster.num_workers))
    return max(1, int(resources.get("CPU", 1) // (cluster.num_workers * cluster.cpus_per_worker)))


def compare(job: CompareConfig) -> Comparison:
    """Train and test each method with each seed on the job's data; outputs under ``job.output_dir``.

    The data is sharded first (or the committed shards reused), as in the main job. Each
    (method, seed) is :func:`run_one` in a Ray task of its own, so runs proceed side by side
    as far as the cluster's CPUs (or GPUs) allow; each run's Ray Train checkpoints go to
    ``cluster.storage_path`` (empty: ``<output_dir>/runs``), and a rerun continues the runs it
    finds there. The table (``comparison.md``, ``comparison.json``) is written here; with a
    tracking URI (or ``MLFLOW_TRACKING_URI``) the table and per-method means go to MLflow.
    """
    import ray

    from bgwsol.data.shards.jobs import shard_sources
    from bgwsol.data.storage import check_access
    from bgwsol.ray_init import init_ray
    from bgwsol.training.cluster_resources import ResourceWatch
    from bgwsol.data.plan import plan_data

    plan = plan_runs(list(job.methods))
    post_hoc = {ph: source for source, phs in plan.items() for ph in phs}
    out = Path(job.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    init_ray(job.ray)
    with ResourceWatch(job.cluster.resource_wait_s):  # says what the job waits for; stops it after the bound
        data = RunData(*shard_sources(job, job.etl))
        scoring = plan_data(data, False)  # the intact validation and test shards, listed once for every run
        cluster = replace(job.cluster, storage_path=check_access(job.cluster.storage_path or str(out / "runs"),
                                                                 writable=True).url)
        runs = [(method, seed) for method in plan for seed in job.seeds]
        done: dict[tuple[str, int], RunResult] = {}
        if job.tune:
            # one search at a time from here: Tune runs its trials side by side as the cluster allows
            for m, s in runs:
                cfg = replace(job.run, **{"method.name": m, "train.seed": s})
                search = replace(job.search, num_samples=job.tune, seed=s)
                log.info("search %d of %d: %s seed %d, %d trials over %s", len(done) + 1, len(runs), m, s,
                         job.tune, ", ".join(tune_space(m)))
                # named by what it depends on: a rerun continues the same search (Tune's restore)
                done[(m, s)] = tune_one(cfg, data, scoring, cluster, job.tracking, search, plan[m],
                                        str(out / f"{m}-seed{s}"))
                log.info("finished %s seed %d (%d of %d, %.0f s): %s", m, s, len(done), len(runs), time.time() - t0,
                         settings_text(done[(m, s)].settings))
            runs = []
        task = ray.remote(num_cpus=0)(run_one)  # a driver per run; its Ray Train workers hold the resources
        at_once = runs_at_once(cluster)
        if runs:
            log.info("%d runs, %d at a time (%d Ray Train worker(s) each)", len(runs), at_once, cluster.num_workers)
        waiting, in_flight = list(runs), {}
        while waiting or in_flight:
            while waiting and len(in_flight) < at_once:
                m, s = waiting.pop(0)
                ref = task.remote(replace(job.run, **{"method.name": m, "train.seed": s}), data, scoring, cluster,
                                  plan[m], str(out / f"{m}-seed{s}"))
                in_flight[ref] = (m, s)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            run = in_flight.pop(ready[0])
            done[run] = ray.get(ready[0])
            log.info("finished %s seed %d (%d of %d, %.0f s)", *run, len(done), len(runs), time.time() - t0)
    results = {method: [done[(method, seed)] for seed in job.seeds] for method in plan}
    comparison = Comparison(results, post_hoc, list(job.methods))
    (out / "comparison.md").write_text(comparison.markdown() + "\n")
    comparison_report(comparison, out / "report.html", scoring.test, job.run.data.input_size, list(job.seeds))
    (out / "comparison.json").write_text(json.dumps({"methods": list(job.methods), "seeds": list(job.seeds),
                                                     "seconds": time.time() - t0, "ranking": comparison.ranking(),
                                                     "rows": comparison.rows(), "tune": job.tune,
                                                     "settings": {m: [r.settings for r in runs]
                                                                  for m, runs in results.items()}}, indent=2))
    log_comparison(comparison, job.run, list(job.seeds), job.tracking, out)
    return comparison


def comparison_report(comparison: Comparison, path: Path, test_urls: list[str], input_size: int,
                      seeds: list[int]) -> Path:
    """``report.html`` of a comparison: the table's means over seeds; the curves, per-class
    scores, examples and loss terms of each line's first seed."""
    from bgwsol.workflows.report import ModelReport, example_tiles, per_class_by_name, write_report

    models, examples = [], {}
    for row, entry in zip(comparison.table_rows(), comparison.rows()):
        first = comparison.results[row.trained][0]
        final = first.final
        means = {m: entry[m][0] for m in TABLE_METRICS if m in entry}
        models.append(ModelReport(row.label, means, dict(final.taus.get(row.variant, {})) if final else {},
                                  final.test_curves.get(row.variant, {}) if final else {},
                                  per_class_by_name(final, row.variant, first.class_names) if final else {},
                                  first.history, f"{row.trained} (seed {seeds[0]})", first.best_epoch))
        if row.variant in first.examples:
            examples[row.label] = first.examples[row.variant]
    notes = [f"Table: means over {len(seeds)} seed(s) {seeds}; curves, per-class scores, pictures and loss terms: "
             f"seed {seeds[0]} of each method.", comparison.ranking()]
    tiles = example_tiles(examples, test_urls, input_size, rank_by=OURS) if examples else None
    return write_report(path, "bgwsol: methods compared", models, tiles, [n for n in notes if n])


def _metric_name(key: str) -> str:
    return key.replace("/", ".")


def log_comparison(comparison: Comparison, base: RunConfig, seeds: list[int], tracking, out: Path) -> str | None:
    """One MLflow parent run (config, table as artifacts, the ranking line) and a child run per method
    with ``<metric>_mean`` / ``<metric>_std`` and the per-seed values (step = the seed);
    a method's extra map variants are prefixed with their name. Returns the parent's id
    (None without a tracking URI)."""
    from bgwsol.tracking.run_logger import RunLogger
    from bgwsol.tracking.runs import git_state, redact_url, runs_view_path

    parent = RunLogger(tracking, "compare-methods")
    if not parent.enabled:
        return None
    rows = comparison.table_rows()
    methods = list(dict.fromkeys(r.method for r in rows))
    params = {k: v for k, v in flatten(to_dict(base)).items() if k not in ("method.name", "train.seed")}
    parent.start(params={**params, "methods": ",".join(methods), "seeds": ",".join(map(str, seeds))}, tags=git_state())
    try:
        entries = {e["key"]: e for e in comparison.rows()}
        parent.log_metrics({f"{_metric_name(k)}.{RANK_METRIC}_mean": e[RANK_METRIC][0]
                            for k, e in entries.items() if RANK_METRIC in e}, step=0)
        ranking = comparison.ranking()
        if ranking:
            parent.set_tags({"ranking": ranking})
        for name in ("comparison.md", "comparison.json", "report.html"):
            if (out / name).exists():
                parent.log_artifact(out / name)
        for method in methods:
            child = RunLogger(tracking, method, parent_run_id=parent.run_id)
            mine = [r for r in rows if r.method == method]
            child.start(params={"method": method, "trained_as": mine[0].trained, "seeds": ",".join(map(str, seeds))},
                        tags=git_state())
            for row in mine:
                e = entries[row.key]
                prefix = "" if row.key == method else f"{row.variant}."
                metrics = {}
                for m in TABLE_METRICS:
                    if m in e:
                        metrics[f"{prefix}{m}_mean"], metrics[f"{prefix}{m}_std"] = e[m]
                child.log_metrics(metrics, step=0)
                for i, seed in enumerate(seeds[:e["seeds"]]):
                    child.log_metrics({f"{prefix}{m}": vals[i] for m, vals in e["per_seed"].items()}, step=seed)
            child.end()
        parent.end()
    except Exception:
        parent.end("FAILED")
        raise
    view = runs_view_path(parent.uri, tracking.experiment)
    if view and parent.uri.startswith("http"):
        log.info("MLflow: %s/%s", redact_url(parent.uri).rstrip("/"), view)
    return parent.run_id
