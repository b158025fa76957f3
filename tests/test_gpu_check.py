"""The prepared device check runs on CPU at a tiny size and prints well-formed JSON lines
(the numbers are for the GPU run; here only that every section runs and reports)."""

import importlib.util
import json
from pathlib import Path

import torch


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "benchmarks/gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_tiny_prints_one_json_line_per_figure(capsys):
    assert _load().main(["--tiny"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    figures = {r["figure"] for r in records}
    assert {"machine", "bf16_vs_fp32", "train_step", "train_step_ratio", "eval", "loader", "total_time"} <= figures
    assert not [r for r in records if "error" in r or "skipped" in r]
    steps = [r for r in records if r["figure"] == "train_step"]
    assert len(steps) == 2 * 2 * 2  # cam/bgwsol x fp32/bf16 x NCHW/channels_last (no compile on CPU tiny)
    assert all(r["images_per_s"] > 0 and r["batch"] == 4 for r in steps)
    check = next(r for r in records if r["figure"] == "bf16_vs_fp32")
    assert check["finite_gradients"] and check["ok"], check


def test_losses_are_computed_in_fp32_outside_autocast():
    from bgwsol.config import MethodConfig, ModelConfig
    from bgwsol.methods import build_method
    from bgwsol.models import build_backbone
    from bgwsol.training.engine import compute_losses

    torch.manual_seed(0)
    method = build_method(MethodConfig(name="bgwsol", mask_warmup_epochs=0))
    model = method.build_network(build_backbone("tiny"), 3, ModelConfig()).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, -1])
    full = compute_losses(model, method, images, labels, 0)
    half = compute_losses(model, method, images, labels, 0, torch.bfloat16)
    assert all(v.dtype == torch.float32 for v in half.values())
    # bf16 only in the forward pass: each term within 2 % (in bf16 the min-max maps lost ~10 %)
    for k in full:
        torch.testing.assert_close(half[k], full[k], rtol=0.02, atol=2e-3)
