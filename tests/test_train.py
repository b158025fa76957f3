import json

import pytest

from bgwsol.config import RunConfig, replace
from bgwsol.data.sources.splits import load_splits
from bgwsol.training.engine import train_and_evaluate


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cam", "bgwsol"])
def test_train_and_evaluate_writes_a_complete_run(tiny_synthetic, tmp_path, method):
    paths, _ = tiny_synthetic
    cfg = replace(RunConfig(), **{
        "output_dir": str(tmp_path / method), "data.root": str(paths.ilsvrc), "data.background": str(paths.background),
        "data.val_fraction": 0.3, "data.input_size": 48, "method.name": method, "method.mask_warmup_epochs": 1,
        "train.epochs": 2, "train.batch_size": 8, "train.log_every": 2, "eval.cam_curve_interval": 0.05})
    splits = load_splits("ilsvrc", paths.ilsvrc, paths.background, 0.3)
    result = train_and_evaluate(cfg, splits, show_progress=False)
    out = tmp_path / method
    for name in ("config.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "history.jsonl", "results.json",
                 "overlays_test.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"]["main"]["num_images"] == len(splits.test)
    for key in ("maxboxacc_v2", "boxacc_v2_at_tau", "gt_known_loc", "top1_loc", "top1_cls", "pxap"):
        assert 0.0 <= saved["test"]["main"][key] <= 100.0
    # thresholds come from validation and are stored with the results
    assert set(saved["taus_from_val"]) == {"30", "50", "70"}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    step_terms = {k for rec in history if "step" in rec for k in rec}
    expected = {"cls"} if method == "cam" else {"cls", "bg", "obj", "fg_cls", "mask", "area"}
    assert expected <= step_terms
    if method == "bgwsol":
        assert set(result.test) == {"main", "cam_only", "mask_only"}


def test_method_needing_background_refuses_to_run_without(tiny_synthetic, tmp_path):
    paths, _ = tiny_synthetic
    cfg = replace(RunConfig(), **{"output_dir": str(tmp_path), "data.root": str(paths.ilsvrc), "method.name": "bgwsol",
                                  "data.val_fraction": 0.3})
    with pytest.raises(ValueError, match="background"):
        train_and_evaluate(cfg, show_progress=False)
