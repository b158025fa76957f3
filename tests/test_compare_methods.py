import json
from pathlib import Path

import pytest

from bgwsol.workflows.compare import Comparison, RunResult, plan_runs
from conftest import load_flow



def test_plan_scores_post_hoc_methods_on_their_source_runs():
    assert plan_runs(["cam", "eigencam", "bas", "bgwsol"]) == {"cam": ["eigencam"], "bas": [], "bgwsol": []}
    # Eigen-CAM alone still needs (and brings) the CAM runs
    assert plan_runs(["eigencam"]) == {"cam": ["eigencam"]}
    with pytest.raises(ValueError, match="known"):
        plan_runs(["cam", "gradcam++"])


def fake(values: dict[str, dict[str, float]]) -> RunResult:
    return RunResult(Path("."), val={}, test=values, taus={50: 0.5}, history=[])


def table(bgwsol_scores, bas_scores=(50.0, 52.0), cam=(40.0, 42.0), eig=(30.0, 34.0)):
    results = {
        "cam": [fake({"main": {"maxboxacc_v2": c, "top1_cls": 80.0}, "eigencam": {"maxboxacc_v2": e, "top1_cls": 80.0}})
                for c, e in zip(cam, eig)],
        "bas": [fake({"main": {"maxboxacc_v2": b, "top1_cls": 70.0}}) for b in bas_scores],
        "bgwsol": [fake({"main": {"maxboxacc_v2": g, "top1_cls": 90.0}, "mask_only": {"maxboxacc_v2": 99.0}})
                   for g in bgwsol_scores],
    }
    return Comparison(results, {"eigencam": "cam"}, ["cam", "eigencam", "bas", "bgwsol"])


def test_table_rows_means_spread_bold_and_the_ranking_line():
    comp = table(bgwsol_scores=(60.0, 64.0))
    rows = comp.rows()
    assert [r["key"] for r in rows] == ["cam", "eigencam", "bas", "bgwsol", "bgwsol/mask_only"]
    by = {r["key"]: r for r in rows}
    assert by["eigencam"]["maxboxacc_v2"] == (32.0, 2.0)  # mean, population std over the 2 seeds
    assert by["bas"]["maxboxacc_v2"] == (51.0, 1.0)
    assert by["eigencam"]["per_seed"]["maxboxacc_v2"] == [30.0, 34.0]
    md = comp.markdown()
    assert "| eigencam (post-hoc, cam model) | 2 | 32.0 ± 2.0 |" in md
    # the best method mean is bold; the variant row (99) is not a method and is not compared
    assert "**62.0 ± 2.0**" in md and "**99.0" not in md
    # the ranking names the first method and its lead; bgwsol's mask-only map (99) is not a method
    assert "First on MaxBoxAccV2: bgwsol 62.0, ahead of bas (51.0) by 11.0 points." in md


def test_the_ranking_line_names_whoever_is_first():
    comp = table(bgwsol_scores=(45.0, 47.0))
    ranking = comp.ranking()
    assert ranking == "First on MaxBoxAccV2: bas 51.0, ahead of bgwsol (46.0) by 5.0 points."
    assert ranking in comp.markdown() and "goal" not in comp.markdown().lower()
    assert "**51.0 ± 1.0**" in comp.markdown()
    assert table(bgwsol_scores=(50.0, 52.0)).ranking().startswith("Tied first on MaxBoxAccV2: ")


@pytest.mark.ray
@pytest.mark.slow
def test_flow_end_to_end_one_seed_with_mlflow(tiny_synthetic, ray_local, tmp_path):
    """flows/compare_methods.py on the tiny dataset: shards, then 3 methods trained through Ray Train
    (the main job's path) + Eigen-CAM on the CAM run, the table on disk and one MLflow parent run
    with a child per method."""
    from mlflow import MlflowClient

    paths, _ = tiny_synthetic
    out, uri = tmp_path / "cmp", f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = load_flow("compare_methods").main(["--source", str(paths.ilsvrc), "--background", str(paths.background), "--seeds", "0",
                           "--output_dir", str(out), "--shards_dir", str(tmp_path / "shards"),
                           "--etl.val_fraction", "0.3", "--etl.max_short_side", "64", "--run.data.input_size", "48",
                           "--run.train.epochs", "1", "--run.train.batch_size", "8", "--run.train.log_every", "2",
                           "--run.method.bas_warmup_epochs", "0", "--run.eval.cam_curve_interval", "0.05",
                           "--tracking.tracking_uri", uri, "--tracking.experiment", "cmp"])
    assert rc == 0
    assert (tmp_path / "shards" / "ilsvrc" / "manifest.json").is_file()  # local runs read shards too
    # Eigen-CAM was not trained: scored on the CAM run, with its own validation thresholds
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bas-seed0", "bgwsol-seed0", "cam-seed0", "runs"]
    assert len([p for p in (out / "runs").glob("cam-seed0-*/checkpoint_*") if p.is_dir()]) == 1  # Ray Train's
    cam = json.loads((out / "cam-seed0" / "results.json").read_text())
    assert {"main", "eigencam"} <= set(cam["test"]) and {"main", "eigencam"} <= set(cam["val"])
    assert set(cam["taus_from_val"]["eigencam"]) == {"30", "50", "70"}
    bas = json.loads((out / "bas-seed0" / "results.json").read_text())
    history = [json.loads(line) for line in (out / "bas-seed0" / "history.jsonl").read_text().splitlines()]
    assert {"train_cls", "train_ac", "train_area", "train_fg"} <= {k for rec in history for k in rec}
    assert (out / "bas-seed0" / "overlays_test.png").is_file()
    saved = json.loads((out / "comparison.json").read_text())
    keys = [r["key"] for r in saved["rows"]]
    assert keys[:4] == ["cam", "eigencam", "bas", "bgwsol"]
    for row in saved["rows"]:
        for metric in ("maxboxacc_v2", "gt_known_loc", "top1_loc", "top5_loc", "top1_cls", "pxap"):
            mean, std = row[metric]
            assert 0.0 <= mean <= 100.0 and std == 0.0
    assert saved["rows"][2]["maxboxacc_v2"][0] == pytest.approx(bas["test"]["main"]["maxboxacc_v2"])
    md = (out / "comparison.md").read_text()
    assert md.startswith("| method | seeds | MaxBoxAccV2") and "First on MaxBoxAccV2: " in md
    assert saved["ranking"] in md

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "compare-methods"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {"cam", "eigencam", "bas", "bgwsol"}
    assert children["eigencam"].data.params["trained_as"] == "cam"
    for name, child in children.items():
        row = next(r for r in saved["rows"] if r["key"] == name)
        assert child.data.metrics["maxboxacc_v2_mean"] == pytest.approx(row["maxboxacc_v2"][0])
        assert child.data.metrics["maxboxacc_v2_std"] == pytest.approx(0.0)
    assert "mask_only.maxboxacc_v2_mean" in children["bgwsol"].data.metrics
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} == {"comparison.md", "comparison.json",
                                                                             "report.html"}
    page = (out / "report.html").read_text()
    # one row per table line (eigencam and bgwsol's map variants included), pictures embedded
    assert page.count("<tr data-model=") == len(saved["rows"]) and page.count("data:image/png;base64,") > 4


def test_loss_panels_are_titled_by_their_run_and_show_every_epoch_with_the_best_marked():
    """Rows that score one run (CAM and Eigen-CAM on it; bgwsol and its map variants) share one
    panel titled by the run, which plots every epoch the run trained and marks the epoch of the
    checkpoint that was scored (it used to plot the best checkpoint's history and take the last
    row's name: "eigencam (post-hoc, cam model)" over CAM's curves)."""
    from bgwsol.workflows.report import ModelReport, loss_figure

    def history(n):
        return [{"epoch": e, "train_loss": 2.0 - 0.1 * e, "train_cls": 1.0} for e in range(n)]

    def row(label, run, epochs, best):
        return ModelReport(label, {}, {}, {}, {}, history(epochs), run, best)

    fig = loss_figure([row("cam", "cam (seed 0)", 8, 4), row("eigencam (post-hoc, cam model)", "cam (seed 0)", 8, 4),
                       row("bgwsol", "bgwsol (seed 0)", 8, 6), row("bgwsol (mask only)", "bgwsol (seed 0)", 8, 6)])
    assert [ax.get_title() for ax in fig.axes] == ["cam (seed 0)", "bgwsol (seed 0)"]
    for ax, best in zip(fig.axes, (4, 6)):
        loss = next(line for line in ax.get_lines() if line.get_label() == "loss")
        assert list(loss.get_xdata()) == list(range(1, 9))  # every epoch, not only up to the best
        marked = [line for line in ax.get_lines() if line.get_label() == "best epoch (kept)"]
        assert len(marked) == 1 and list(marked[0].get_xdata()) == [best + 1, best + 1]


@pytest.mark.ray
@pytest.mark.slow
def test_tune_searches_each_method_on_validation_and_says_what_it_chose(tiny_synthetic, ray_local, tmp_path):
    """--tune 2: a Ray Tune search of 2 trials over CAM's own settings (the configured ones first),
    the best trial by validation scored once on test; the table says the settings it ended with."""
    from bgwsol.training.tune import SPACES

    paths, _ = tiny_synthetic
    out = tmp_path / "cmp"
    # its own tracking store: an earlier test's job may have left a stopped server's MLFLOW_TRACKING_URI
    # in this process's environment (the search then refuses to start, rightly)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = load_flow("compare_methods").main(["--source", str(paths.ilsvrc), "--background", str(paths.background),
                                            "--tracking.tracking_uri", uri,
                                            "--seeds", "0", "--methods", "cam", "--tune", "2",
                                            "--output_dir", str(out), "--shards_dir", str(tmp_path / "shards"),
                                            "--etl.val_fraction", "0.3", "--etl.max_short_side", "64",
                                            "--run.data.input_size", "48", "--run.train.epochs", "2",
                                            "--run.train.batch_size", "8", "--run.eval.cam_curve_interval", "0.05",
                                            "--search.lr", "0.01", "0.05"])
    assert rc == 0
    saved = json.loads((out / "comparison.json").read_text())
    chosen = saved["settings"]["cam"][0]
    assert saved["tune"] == 2 and set(chosen) == set(SPACES["cam"]) and 0.01 <= chosen["lr"] <= 0.05
    assert "Settings each search chose on validation:\n- cam: seed 0: lr " in (out / "comparison.md").read_text()
    assert f"lr: {chosen['lr']}" in (out / "cam-seed0" / "config.yaml").read_text()  # the run's own settings
    # Tune's two trials, each a Ray Train run of its own with at least its first epoch committed (2 epochs:
    # ASHA's rung after epoch 1 may stop one there, never at its last report)
    trained = [p for p in (out / "runs").glob("tune-cam-seed0-*-*") if any(p.glob("checkpoint_*"))]
    assert len(trained) == 2, sorted(p.name for p in (out / "runs").iterdir())
    # the run's own test figure is the one the table shows for its seed
    run_figure = json.loads((out / "cam-seed0" / "results.json").read_text())["test"]["main"]["maxboxacc_v2"]
    cam_row = next(r for r in saved["rows"] if r["key"] == "cam")
    assert 0 <= run_figure <= 100 and cam_row["per_seed"]["maxboxacc_v2"] == [run_figure]
