"""The WSOL network: backbone features, a 1x1-conv classifier (CAM) and a foreground head."""

from __future__ import annotations

import torch
from torch import nn


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient scaled by ``scale`` (0 detaches, 1 is a no-op)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _ScaleGrad.apply(x, scale)


class WSOLNet(nn.Module):
    """Backbone + class activation maps + optional class-agnostic foreground head.

    ``forward(images)`` with images ``(B, 3, H, W)`` returns a dict:

    * ``cams``: ``(B, K, h, w)`` class activation maps ``A = W . F`` (1x1 conv);
    * ``logits``: ``(B, K)`` = spatial mean of ``cams`` (GAP commutes with the 1x1 conv);
    * ``fg_logits``: ``(B, 1, h, w)`` foreground-head logits, present when the head is;
    * ``features``: ``(B, C, h, w)`` the backbone features ``F`` themselves (the same tensor,
      not a copy), for post-hoc maps such as Eigen-CAM.

    ``fg_grad_scale`` sets how much of the foreground head's gradient reaches the shared
    features: the head must not be bought with the classifier.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, fg_head: bool = False, fg_grad_scale: float = 1.0):
        super().__init__()
        self.backbone = backbone
        channels = backbone.out_channels
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.fg_grad_scale = fg_grad_scale
        self.fg_head = None
        if fg_head:
            mid = max(32, channels // 4)
            self.fg_head = nn.Sequential(
                nn.Conv2d(channels, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, 1, 1),
            )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, h, w)``."""
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        cams = self.classifier(features)
        out = {"cams": cams, "logits": cams.mean(dim=(2, 3)), "features": features}
        if self.fg_head is not None:
            out["fg_logits"] = self.fg_head(scale_grad(features, self.fg_grad_scale))
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(images))
