import math

import pytest
import torch

from bgwsol.config import MethodConfig, RunConfig, replace
from bgwsol.methods import build_method
from bgwsol.models import BASNet, WSOLNet, build_backbone
from bgwsol.training.engine import build_model


def hand_made(fg: torch.Tensor, k: int = 2, y: int = 0, tail=lambda m: m):
    """One image, 4x4 maps, ``k`` classes; mid-level features = class maps (identity tail).

    Class ``y``'s features are 1 on the 2x2 region rows 1-2, cols 1-2 (area 1/4), 0 elsewhere.
    """
    mid = torch.zeros(1, k, 4, 4)
    mid[0, y, 1:3, 1:3] = 1.0
    cams = tail(mid)
    return {"cams": cams, "logits": cams.mean(dim=(2, 3)), "mid": mid, "fg_logits": fg, "erased_cams": tail}


def fg_logits(region: tuple[slice, slice] | None = None, inside: float = 20.0, outside: float = -20.0, k: int = 2):
    fg = torch.full((1, k, 4, 4), outside)
    if region is not None:
        fg[(0, 0, *region)] = inside
    return fg.requires_grad_()


REGION = (slice(1, 3), slice(1, 3))
METHOD = build_method(MethodConfig(name="bas", bas_warmup_epochs=0))


def test_all_zero_map_keeps_all_activation_and_explains_nothing():
    terms = METHOD.losses(hand_made(fg_logits()), torch.tensor([0]), epoch=0)
    assert terms["area"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["ac"].item() == pytest.approx(1.0, rel=1e-4)  # nothing erased: erased / full = 1
    assert terms["fg"].item() == pytest.approx(math.log(2), rel=1e-4)  # GAP(A * 0) = 0: uniform over 2 classes


def test_all_ones_map_erases_everything_at_full_area():
    terms = METHOD.losses(hand_made(fg_logits(REGION, outside=20.0)), torch.tensor([0]), epoch=0)
    assert terms["area"].item() == pytest.approx(1.0, abs=1e-6)
    assert terms["ac"].item() == pytest.approx(0.0, abs=1e-6)
    # GAP(A * 1) = (1/4, 0): CE = log(1 + e^{-1/4})
    assert terms["fg"].item() == pytest.approx(math.log(1 + math.exp(-0.25)), rel=1e-4)
    assert terms["cls"].item() == pytest.approx(math.log(1 + math.exp(-0.25)), rel=1e-4)


def test_map_on_the_known_region_erases_it_at_its_own_area():
    terms = METHOD.losses(hand_made(fg_logits(REGION)), torch.tensor([0]), epoch=0)
    assert terms["area"].item() == pytest.approx(0.25, abs=1e-6)
    assert terms["ac"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["fg"].item() == pytest.approx(math.log(1 + math.exp(-0.25)), rel=1e-4)
    # half the region: half its activation is left
    half = METHOD.losses(hand_made(fg_logits((slice(1, 2), slice(1, 3)))), torch.tensor([0]), epoch=0)
    assert half["ac"].item() == pytest.approx(0.5, rel=1e-4)
    assert half["area"].item() == pytest.approx(0.125, abs=1e-6)


def test_the_map_is_class_aware():
    # the map of class 1 covers the region, class 0's is empty: for label 0 nothing is erased
    fg = torch.full((1, 2, 4, 4), -20.0)
    fg[0, 1, 1:3, 1:3] = 20.0
    terms = METHOD.losses(hand_made(fg), torch.tensor([0]), epoch=0)
    assert terms["ac"].item() == pytest.approx(1.0, rel=1e-4) and terms["area"].item() == pytest.approx(0.0, abs=1e-6)
    maps = METHOD.scoremaps({"fg_logits": fg}, torch.tensor([1]))
    assert maps.shape == (1, 4, 4) and maps[0, 1:3, 1:3].min() == pytest.approx(1.0, abs=1e-4)
    assert maps[0, 0].max() == pytest.approx(0.0, abs=1e-4)


def test_erased_activation_above_the_full_one_counts_zero():
    # a tail that triples the erased features: more activation than the full pass
    outputs = hand_made(fg_logits())
    outputs["erased_cams"] = lambda m: 3 * m
    assert METHOD.losses(outputs, torch.tensor([0]), epoch=0)["ac"].item() == 0.0


def test_total_is_the_weighted_sum_and_warmup_leaves_only_classification():
    m = build_method(MethodConfig(name="bas", bas_lambda_ac=0.7, bas_lambda_area=3.0, bas_lambda_fg=0.2,
                                  bas_warmup_epochs=2))
    half = hand_made(fg_logits((slice(1, 2), slice(1, 3))))
    during = m.losses(half, torch.tensor([0]), epoch=1)
    assert during["loss"].item() == pytest.approx(during["cls"].item())
    assert during["ac"].item() == during["area"].item() == during["fg"].item() == 0.0
    after = m.losses(half, torch.tensor([0]), epoch=2)
    expected = after["cls"] + 0.7 * after["ac"] + 3.0 * after["area"] + 0.2 * after["fg"]
    assert after["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert after["ac"].item() > 0 and after["area"].item() > 0


def test_background_images_are_ignored():
    a = hand_made(fg_logits((slice(1, 2), slice(1, 3))))
    b = {k: (torch.cat([v, v.detach() * 0 + 5]) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    one = METHOD.losses(a, torch.tensor([0]), epoch=0)
    two = METHOD.losses(b, torch.tensor([0, -1]), epoch=0)
    for key in ("loss", "cls", "ac", "area", "fg"):
        assert two[key].item() == pytest.approx(one[key].item(), rel=1e-5), key


def test_activation_constraint_pushes_the_map_up_where_the_class_is():
    outputs = hand_made(fg_logits(inside=0.0, outside=0.0, region=REGION))
    m = build_method(MethodConfig(name="bas", bas_lambda_area=0.0, bas_lambda_fg=0.0, bas_warmup_epochs=0))
    m.losses(outputs, torch.tensor([0]), epoch=0)["loss"].backward()
    grad = outputs["fg_logits"].grad[0, 0]
    assert (grad[1:3, 1:3] < 0).all()  # descending raises the map on the region
    assert grad[0].abs().max() == 0  # off the region erasing changes nothing


# ----------------------------------------------------------------------------- the network


def test_bas_network_from_the_model_builder_keeps_wsolnet_keys():
    cfg = replace(RunConfig(), **{"method.name": "bas"})
    net = build_model(cfg, 3, build_method(cfg.method))
    assert isinstance(net, BASNet)
    plain = WSOLNet(build_backbone("tiny"), 3)
    assert set(net.state_dict()) - set(plain.state_dict()) == {"fg_generator.weight", "fg_generator.bias"}
    assert set(plain.state_dict()) <= set(net.state_dict())
    # a CAM checkpoint's backbone and classifier load into it unchanged
    missing = net.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["fg_generator.bias", "fg_generator.weight"]


@pytest.mark.parametrize("name, size", [("tiny", 32), ("resnet18", 32), ("vgg16", 32)])
def test_backbone_split_composes_to_the_whole(name, size):
    torch.manual_seed(0)
    bb = build_backbone(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        mid = bb.forward_mid(x)
        assert mid.shape[1] == bb.mid_channels
        torch.testing.assert_close(bb.forward_late(mid), bb(x))


def _net():
    torch.manual_seed(0)
    return BASNet(build_backbone("tiny"), 3)


def test_erased_pass_shares_the_weights_and_matches_the_first_pass_when_nothing_is_erased():
    net = _net().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(out["erased_cams"](out["mid"]), out["cams"])
        net.classifier.weight.mul_(2.0)  # shared, not copied: the second pass sees the change
        out2 = net(x)
        torch.testing.assert_close(out2["erased_cams"](out2["mid"]), out2["cams"])
        assert not torch.allclose(out2["cams"], out["cams"])


def test_erased_pass_trains_only_the_map_and_leaves_running_stats():
    net = _net().train()
    out = net(torch.randn(4, 3, 32, 32))
    late_bn = net.backbone.body[-1].bn1
    before = late_bn.running_mean.clone(), int(late_bn.num_batches_tracked)
    m = torch.sigmoid(out["fg_logits"][:, :1])
    erased = out["erased_cams"](out["mid"].detach() * (1 - m))
    torch.testing.assert_close(late_bn.running_mean, before[0])
    assert int(late_bn.num_batches_tracked) == before[1]
    erased[:, 0].mean().backward()
    assert net.fg_generator.weight.grad.abs().sum() > 0
    late = [p for p in net.backbone.body[net.backbone.split:].parameters()] + list(net.classifier.parameters())
    assert all(p.grad is None for p in late)
    # the first pass does update them (the check above can fail)
    net(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.allclose(late_bn.running_mean, before[0])


def test_losses_on_a_real_network_backpropagate_to_every_part():
    net = _net().train()
    terms = METHOD.losses(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]), epoch=0)
    assert set(terms) == {"loss", "cls", "ac", "area", "fg"}
    terms["loss"].backward()
    for part in (net.fg_generator, net.classifier, net.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_the_authors_variants_are_switches():
    """bas_activation 'pooled' is BAS-Extension's relu(mean(A_y)); bas_map 'mean' averages every
    class's map (class-agnostic); train.head_lr_mult puts the added layers at that multiple of the
    backbone's learning rate."""
    from bgwsol.checkpoint import build_model
    from bgwsol.config import RunConfig, replace
    from bgwsol.methods import build_method
    from bgwsol.methods.bas import activation
    from bgwsol.training.engine import make_optimizer

    cams = torch.tensor([[[[2.0, -4.0]]], [[[1.0, 1.0]]]])  # (2, 1, 1, 2)
    classes = torch.tensor([0, 0])
    assert activation(cams, classes).tolist() == [1.0, 1.0]  # mean(relu): the -4 is dropped
    assert activation(cams, classes, pooled=True).tolist() == [0.0, 1.0]  # relu(mean): -1 -> 0

    fg_logits = torch.tensor([[[[0.0, 4.0]], [[4.0, 0.0]]]])  # (1, 2 classes, 1, 2): opposite maps
    outputs = {"fg_logits": fg_logits}
    own = build_method(replace(RunConfig(), **{"method.name": "bas"}).method)
    mean = build_method(replace(RunConfig(), **{"method.name": "bas", "method.bas_map": "mean"}).method)
    assert own.scoremaps(outputs, torch.tensor([0])).flatten().tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
    flat = mean.scoremaps(outputs, torch.tensor([0]))
    assert flat.shape == (1, 1, 2) and torch.equal(flat, mean.scoremaps(outputs, torch.tensor([1])))

    cfg = replace(RunConfig(), **{"method.name": "bas", "model.backbone": "tiny", "train.lr": 0.01,
                                  "train.head_lr_mult": 10.0})
    model = build_model(cfg, 3, build_method(cfg.method))
    groups = make_optimizer(model, cfg).param_groups
    backbone = {id(p) for p in model.backbone.parameters()}
    assert [g["lr"] for g in groups] == [0.01, 0.01, 0.1, 0.1]
    assert all(id(p) in backbone for g in groups[:2] for p in g["params"])
    assert {id(p) for g in groups[2:] for p in g["params"]} == {id(p) for p in model.parameters()} - backbone
    assert len(make_optimizer(model, replace(cfg, **{"train.head_lr_mult": 1.0})).param_groups) == 2
