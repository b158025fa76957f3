import argparse

import pytest

from bgwsol.config import RunConfig, add_config_args, config_from_args, from_dict, read_yaml, replace, write_yaml


def parse(argv, defaults=None):
    p = argparse.ArgumentParser()
    add_config_args(p, RunConfig, defaults)
    return config_from_args(RunConfig, p.parse_args(argv), defaults)


def test_flags_override_yaml_and_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  epochs: 7\n  lr: 0.5\nmethod:\n  name: cam\n")
    cfg = parse(["--config", str(y), "--train.lr", "0.01", "--no-eval.multi_contour", "--eval.iou_thresholds", "50"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01 and cfg.method.name == "cam"
    assert cfg.eval.multi_contour is False and cfg.eval.iou_thresholds == (50,)


def test_unknown_and_mistyped_keys_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(RunConfig, {"train": {"epochz": 3}})
    with pytest.raises(ValueError, match="expected true/false"):
        from_dict(RunConfig, {"eval": {"multi_contour": "yes"}})
    with pytest.raises(ValueError, match="not one of"):
        from_dict(RunConfig, {"method": {"obj_loss": "hinge"}})


def test_round_trip(tmp_path):
    cfg = replace(RunConfig(), **{"train.epochs": 3, "method.lambda_bg": 2.0})
    assert read_yaml(RunConfig, write_yaml(cfg, tmp_path / "c.yaml")) == cfg


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        parse(["--config", str(tmp_path / "nope.yaml")])
