import numpy as np
import pytest
import torch

from bgwsol.config import MethodConfig
from bgwsol.methods import build_method
from bgwsol.methods.eigencam import eigen_cam
from bgwsol.models import BASNet, WSOLNet, build_backbone


def planted(seed: int, region: torch.Tensor, strength: float = 3.0, c: int = 16) -> torch.Tensor:
    """Non-negative features (post-ReLU-like): weak noise everywhere plus one direction ``v``
    (non-negative, random) with amplitude ``strength`` on the pixels of ``region``."""
    g = torch.Generator().manual_seed(seed)
    h, w = region.shape
    noise = 0.2 * torch.rand(c, h, w, generator=g)
    v = torch.rand(c, generator=g) + 0.1
    v = v / v.norm()
    return (noise + strength * v[:, None, None] * region.float())[None]


def square(h=7, w=7, box=(1, 4, 2, 5)) -> torch.Tensor:
    r = torch.zeros(h, w, dtype=torch.bool)
    r[box[0]:box[1], box[2]:box[3]] = True
    return r


@pytest.mark.parametrize("seed", range(12))
def test_planted_component_is_positive_on_its_region_and_maps_to_unit_range(seed):
    region = square()
    maps = eigen_cam(planted(seed, region))
    assert maps.shape == (1, 7, 7)
    assert maps.min().item() == pytest.approx(0.0, abs=1e-5) and maps.max().item() == pytest.approx(1.0, abs=1e-4)
    inside, outside = maps[0][region], maps[0][~region]
    # the sign is fixed: the region (strong features) is high, whatever sign the SVD returned
    assert inside.min() > 0.8 and outside.max() < 0.2


@pytest.mark.parametrize("seed", range(6))
def test_sign_follows_the_strong_features_not_the_larger_area(seed):
    # the strong component covers most of the map: then that majority is the object
    region = ~square()
    maps = eigen_cam(planted(seed, region))
    assert maps[0][region].min() > 0.8 and maps[0][~region].max() < 0.2


def test_scale_free_batched_and_gradient_free():
    feats = torch.cat([planted(s, square()) for s in range(4)]).requires_grad_()
    maps = eigen_cam(feats)
    assert not maps.requires_grad
    torch.testing.assert_close(eigen_cam(feats * 37.0), maps, atol=1e-5, rtol=1e-4)
    # batched = one image at a time
    for i in range(4):
        torch.testing.assert_close(maps[i:i + 1], eigen_cam(feats[i:i + 1]), atol=1e-5, rtol=1e-4)


def test_matches_a_reference_projection_up_to_sign():
    torch.manual_seed(0)
    feats = torch.relu(torch.randn(2, 8, 5, 6))
    maps = eigen_cam(feats).numpy()
    for i in range(2):
        x = feats[i].reshape(8, -1).T.numpy().astype(np.float64)
        x = x - x.mean(axis=0)
        proj = x @ np.linalg.svd(x, full_matrices=False)[2][0]
        ref = (proj - proj.min()) / (proj.max() - proj.min())
        flipped = (-proj - (-proj).min()) / ((-proj).max() - (-proj).min())
        got = maps[i].reshape(-1)
        assert min(np.abs(got - ref).max(), np.abs(got - flipped).max()) < 1e-4


def test_method_is_post_hoc_on_cam_and_reads_any_models_features():
    m = build_method(MethodConfig(name="eigencam"))
    assert m.post_hoc_of == "cam" and not m.needs_fg_head and not m.uses_background
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    for net in (WSOLNet(build_backbone("tiny"), 4).eval(), BASNet(build_backbone("tiny"), 4).eval()):
        with torch.no_grad():
            out = net(x)
        assert out["features"].shape[1] == net.backbone.out_channels
        maps = m.scoremaps(out, torch.tensor([0, 1, 2]))
        assert maps.shape == (3, *out["cams"].shape[2:])
        # class-agnostic: the same map for any class
        torch.testing.assert_close(maps, m.scoremaps(out, torch.tensor([3, 3, 3])))
    # training it trains CAM: the same loss terms
    out = {"cams": torch.zeros(2, 3, 4, 4), "logits": torch.zeros(2, 3)}
    assert m.losses(out, torch.tensor([0, 1]), 0).keys() == build_method(MethodConfig(name="cam")).losses(
        out, torch.tensor([0, 1]), 0).keys()
