"""Run several methods x seeds on the same data and summarize test metrics as one table.

Every method trains on the same splits, backbone, schedule and evaluator; each run chooses
its checkpoint and its thresholds on the validation split and reads the test split once.
Post-hoc methods (``Method.post_hoc_of``, e.g. Eigen-CAM on CAM) are not trained: they are
scored on the runs of the method they are computed from, in the same passes over validation
and test. Runs go one after another in this process, or as Ray tasks (one per method and
seed) spread over a cluster. With an MLflow tracking URI the table goes to one parent run
with a child run per method.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgwsol.config import RunConfig, flatten, replace, to_dict
from bgwsol.data.sources.splits import Splits, load_splits
from bgwsol.training.engine import RunResult, train_and_evaluate

log = logging.getLogger(__name__)

TABLE_METRICS = ("maxboxacc_v2", "boxacc_v2_at_tau", "maxboxacc_iou70", "gt_known_loc", "top1_loc", "top5_loc",
                 "top1_cls", "pxap")
HEADERS = {"maxboxacc_v2": "MaxBoxAccV2", "boxacc_v2_at_tau": "BoxAccV2 @ val τ", "maxboxacc_iou70": "IoU70",
           "gt_known_loc": "GT-known Loc", "top1_loc": "Top-1 Loc", "top5_loc": "Top-5 Loc", "top1_cls": "Top-1 cls",
           "pxap": "PxAP"}
GOAL_METHOD, GOAL_METRIC = "bgwsol", "maxboxacc_v2"


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

    def rows(self) -> list[dict]:
        """Per table line: ``method`` (label), ``key``, ``seeds``, metric -> ``(mean, std)`` over
        seeds (population std), and ``per_seed`` metric -> list of values."""
        out = []
        for row in self.table_rows():
            runs = self.results[row.trained]
            entry: dict = {"method": row.label, "key": row.key, "seeds": len(runs), "per_seed": {}}
            for m in TABLE_METRICS:
                vals = [r.test[row.variant][m] for r in runs if m in r.test.get(row.variant, {})]
                if vals:
                    entry[m] = (float(np.mean(vals)), float(np.std(vals)))
                    entry["per_seed"][m] = vals
            out.append(entry)
        return out

    def goal(self) -> str:
        """Whether bgwsol is at or above every other method on MaxBoxAccV2 (means over seeds)."""
        rows = {r.key: r for r in self.table_rows()}
        means = {e["key"]: e[GOAL_METRIC][0] for e in self.rows() if GOAL_METRIC in e}
        if GOAL_METHOD not in means:
            return ""
        others = {k: v for k, v in means.items() if rows[k].method != GOAL_METHOD}
        if not others:
            return ""
        ours = means[GOAL_METHOD]
        below = {k: v for k, v in others.items() if v > ours}
        best_key = max(others, key=others.get)
        if not below:
            return (f"Goal met: {GOAL_METHOD} ({ours:.1f}) is at or above every other method on {HEADERS[GOAL_METRIC]} "
                    f"(next best: {rows[best_key].label}, {others[best_key]:.1f}).")
        return (f"Goal NOT met: on {HEADERS[GOAL_METRIC]}, {GOAL_METHOD} ({ours:.1f}) is below "
                + ", ".join(f"{rows[k].label} ({v:.1f})" for k, v in sorted(below.items(), key=lambda kv: -kv[1])) + ".")

    def markdown(self) -> str:
        """The table (mean ± std over seeds, test split, percent; best method mean per column in
        bold), followed by the goal line when bgwsol is in it."""
        entries = self.rows()
        by_key = {r.key: r for r in self.table_rows()}
        main = [e for e in entries if by_key[e["key"]].variant == "main" or e["key"] in self.post_hoc]
        best = {m: max((e[m][0] for e in main if m in e), default=None) for m in TABLE_METRICS}
        head = "| method | seeds | " + " | ".join(HEADERS[m] for m in TABLE_METRICS) + " |"
        lines = [head, "|" + "---|" * (len(TABLE_METRICS) + 2)]
        for e in entries:
            cells = []
            for m in TABLE_METRICS:
                if m not in e:
                    cells.append("–")
                    continue
                text = f"{e[m][0]:.1f} ± {e[m][1]:.1f}"
                cells.append(f"**{text}**" if e in main and len(main) > 1 and e[m][0] == best[m] else text)
            lines.append(f"| {e['method']} | {e['seeds']} | " + " | ".join(cells) + " |")
        goal = self.goal()
        return "\n".join(lines) + (f"\n\n{goal}" if goal else "")


# ----------------------------------------------------------------------------- running


def run_one(cfg: RunConfig, post_hoc: list[str], splits: Splits | None = None, *,
            show_progress: bool = True) -> RunResult:
    """One (method, seed) run: train and test ``cfg.method`` and score the ``post_hoc`` maps
    computed from it in the same passes (``splits`` loaded from ``cfg.data`` when not given)."""
    from bgwsol.methods import build_method

    extra = {name: build_method(replace(cfg, **{"method.name": name}).method) for name in post_hoc}
    return train_and_evaluate(cfg, splits, show_progress=show_progress, extra_maps=extra)


def ensure_synthetic(root: str | Path, syn) -> None:
    """Generate the synthetic dataset under ``root`` unless it is there (deterministic, so every
    node of a cluster makes the same files); a file lock keeps concurrent tasks on one node
    from writing it at once."""
    import fcntl

    from bgwsol.data.sources.synthetic import generate

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        generate(root, syn, show_progress=False)


def _ray_task(cfg_dict: dict, post_hoc: list[str], synthetic, num_threads: int) -> RunResult:
    """:func:`run_one` as a Ray task on any node: plain data in, the data made on this node if missing."""
    import torch

    from bgwsol.config import from_dict

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(num_threads)
    if synthetic is not None:
        ensure_synthetic(*synthetic)
    return run_one(from_dict(RunConfig, cfg_dict), post_hoc)


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path and "://" not in path else path


def outputs_text(output_dir: str | Path, methods: list[str], seed: int) -> str:
    """Where a comparison's files are (what the comparison flows print at the end)."""
    out = Path(output_dir)
    lines = [f"\nOutputs: {out.resolve()}", f"  table:    {out / 'comparison.md'} and comparison.json"]
    lines += [f"  {m}: {out / f'{m}-seed{seed}'}/{{results.json,history.jsonl,overlays_test.png,config.yaml}}"
              for m in methods]
    return "\n".join(lines)


def compare(base: RunConfig, methods: list[str], seeds: list[int], *, show_progress: bool = True, ray: str = "",
            cpus_per_run: float = 1.0, synthetic: tuple[str | Path, object] | None = None,
            tracking=None) -> Comparison:
    """Train and test each method with each seed on ``base``'s data; outputs under ``base.output_dir``.

    ``ray``: empty runs everything in this process; ``"local"`` starts a local Ray, ``"auto"``
    (or an address) joins a cluster, and each (method, seed) run becomes a Ray task with
    ``cpus_per_run`` CPUs. ``synthetic``: ``(folder, SyntheticConfig)`` when ``base.data`` is the
    generated dataset, so that each task makes it on its node if missing. Per-run files are
    written by the node that ran it (use a shared ``output_dir`` on a multi-node cluster); the
    table (``comparison.md``, ``comparison.json``) is written here. ``tracking``: a
    :class:`~bgwsol.tracking.runs.TrackingConfig`; with a URI (or ``MLFLOW_TRACKING_URI``) the table
    and per-method means go to MLflow.
    """
    plan = plan_runs(methods)
    post_hoc = {ph: source for source, phs in plan.items() for ph in phs}
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if synthetic is not None:
        ensure_synthetic(*synthetic)
    t0 = time.time()
    jobs = [(method, seed) for method in plan for seed in seeds]
    results: dict[str, list[RunResult]] = {method: [] for method in plan}
    if ray:
        base = replace(base, **{"output_dir": _absolute(base.output_dir), "data.root": _absolute(base.data.root),
                                "data.background": _absolute(base.data.background)})
        synthetic = (_absolute(str(synthetic[0])), synthetic[1]) if synthetic is not None else None
    configs = {(m, s): replace(base, **{"method.name": m, "train.seed": s,
                                        "output_dir": str(Path(base.output_dir) / f"{m}-seed{s}")}) for m, s in jobs}
    if ray:
        import ray as ray_mod

        from bgwsol.ray_init import RayConfig, init_ray

        init_ray(RayConfig(address="" if ray == "local" else ray))
        task = ray_mod.remote(num_cpus=cpus_per_run)(_ray_task)
        threads = max(1, int(cpus_per_run))
        refs = {task.remote(to_dict(configs[j]), plan[j[0]], synthetic, threads): j for j in jobs}
        log.info("%d runs submitted to Ray (%s CPUs each)", len(refs), cpus_per_run)
        done: dict[tuple[str, int], RunResult] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray_mod.wait(pending, num_returns=1)
            job = refs[ready[0]]
            done[job] = ray_mod.get(ready[0])
            log.info("finished %s seed %d (%d of %d, %.0f s)", *job, len(done), len(jobs), time.time() - t0)
        for job in jobs:
            results[job[0]].append(done[job])
    else:
        splits = load_splits(base.data.dataset, base.data.root, base.data.background or None, base.data.val_fraction,
                             base.data.max_reject_share)
        log.info("data: %d train, %d val, %d test images, %d background, %d classes", len(splits.train),
                 len(splits.val), len(splits.test), len(splits.background), len(splits.classes))
        for job in jobs:
            results[job[0]].append(run_one(configs[job], plan[job[0]], splits, show_progress=show_progress))
    comparison = Comparison(results, post_hoc, list(methods))
    (out / "comparison.md").write_text(comparison.markdown() + "\n")
    (out / "comparison.json").write_text(json.dumps({"methods": list(methods), "seeds": list(seeds),
                                                     "seconds": time.time() - t0, "goal": comparison.goal(),
                                                     "rows": comparison.rows()}, indent=2))
    if tracking is not None:
        log_comparison(comparison, base, seeds, tracking, out)
    return comparison


def _metric_name(key: str) -> str:
    return key.replace("/", ".")


def log_comparison(comparison: Comparison, base: RunConfig, seeds: list[int], tracking, out: Path) -> str | None:
    """One MLflow parent run (config, table as artifacts, the goal) and a child run per method
    with ``<metric>_mean`` / ``<metric>_std`` and the per-seed values (step = the seed);
    a method's extra map variants are prefixed with their name. Returns the parent's id
    (None without a tracking URI)."""
    from bgwsol.tracking.runs import RunLogger, git_state

    parent = RunLogger(tracking, "compare-methods")
    if not parent.enabled:
        return None
    rows = comparison.table_rows()
    methods = list(dict.fromkeys(r.method for r in rows))
    params = {k: v for k, v in flatten(to_dict(base)).items() if k not in ("method.name", "train.seed")}
    parent.start(params={**params, "methods": ",".join(methods), "seeds": ",".join(map(str, seeds))}, tags=git_state())
    try:
        entries = {e["key"]: e for e in comparison.rows()}
        parent.log_metrics({f"{_metric_name(k)}.{GOAL_METRIC}_mean": e[GOAL_METRIC][0]
                            for k, e in entries.items() if GOAL_METRIC in e}, step=0)
        goal = comparison.goal()
        if goal:
            parent.set_tags({"goal": goal})
        for name in ("comparison.md", "comparison.json"):
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
    return parent.run_id
