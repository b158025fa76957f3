"""Eigen-CAM (Muhammad and Yeasin, IJCNN 2020): a post-hoc, class-agnostic map from features.

For each image, the backbone features ``F`` (``C x h x w``) are read as ``hw`` points in
``R^C``, centred on their mean ``X = F - mean_p F_p``, and projected onto their first
principal component ``v_1`` (top right singular vector of ``X``): ``P_p = X_p . v_1``.

A singular vector's sign is arbitrary. The rule here needs no label: the sign is chosen so
that ``P`` correlates non-negatively with the feature norm ``||F_p||`` over the pixels, i.e.
the map points toward where the features are strongest (post-ReLU features are larger on
objects than on background). The map is ``minmax(P)``, so its scale does not depend on
the features' scale.

Training ``eigencam`` trains CAM (its losses are CAM's); a comparison scores it on the CAM
runs (``post_hoc_of = "cam"``). It reads ``outputs["features"]`` and so works on any
trained model of this package. Batched, on the features' device, without gradients.
"""

from __future__ import annotations

import torch

from bgwsol.methods.cam import CAM
from bgwsol.methods.base import minmax, register


@torch.no_grad()
def eigen_cam(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` features -> ``(B, h, w)`` Eigen-CAM maps in [0, 1] (sign rule in the module doc)."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        f = features.detach().float().flatten(2).transpose(1, 2)  # (B, hw, C)
        x = f - f.mean(dim=1, keepdim=True)
        u, s, _ = torch.linalg.svd(x, full_matrices=False)
        proj = u[..., 0] * s[:, :1]  # = x @ v_1, (B, hw)
        norm = f.norm(dim=2)
        agree = (proj * (norm - norm.mean(dim=1, keepdim=True))).sum(dim=1)
        proj = torch.where(agree[:, None] < 0, -proj, proj)
    return minmax(proj.view(b, h, w))


@register("eigencam")
class EigenCAM(CAM):
    post_hoc_of = "cam"

    def scoremaps(self, outputs: dict, classes: torch.Tensor) -> torch.Tensor:
        return eigen_cam(outputs["features"])
