"""The BAS network (Wu, Zhai, Cao, "Background Activation Suppression for Weakly Supervised
Object Localization", CVPR 2022): a WSOLNet whose backbone is cut at a mid-level stage.

A class-aware foreground map generator (a 3x3 conv to one map per class, sigmoid) reads the
mid-level features; the activation map constraint sends the erased mid-level features
``mid * (1 - M)`` through the later layers and the classifier a second time.

The second pass runs the *same* modules with their parameters detached
(``torch.func.functional_call``): no layer is copied, the weights are shared, and the
constraint's gradient reaches only the foreground map (the paper's code copies the later
layers on every forward pass to get the same effect). In training mode the batch norms of
that pass normalize with the erased batch's own statistics, as the paper's copied layers
do, and leave the running statistics alone (the first pass owns them).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from bgwsol.models.wsol_net import WSOLNet

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class BASNet(WSOLNet):
    """Backbone (split at ``backbone.split``) + 1x1-conv classifier + class-aware foreground generator.

    ``forward(images)`` returns WSOLNet's ``cams``, ``logits`` and ``features``, plus:

    * ``mid``: ``(B, C_mid, h', w')`` mid-level features;
    * ``fg_logits``: ``(B, K, h', w')`` foreground-generator logits, one map per class
      (``M_k = sigmoid(fg_logits[:, k])``);
    * ``erased_cams``: a function mapping mid-level features to class activation maps
      ``(B, K, h, w)`` through the later layers and classifier with gradients to their
      weights stopped (see :meth:`erased_cams`).

    Parameter names are WSOLNet's (``backbone.*``, ``classifier.*``) plus ``fg_generator.*``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__(backbone, num_classes, fg_head=False)
        self.fg_generator = nn.Conv2d(backbone.mid_channels, num_classes, kernel_size=3, padding=1)

    def forward(self, images: torch.Tensor) -> dict:  # type: ignore[override]
        mid = self.backbone.forward_mid(images)
        out = self.forward_head(self.backbone.forward_late(mid))
        out["mid"] = mid
        out["fg_logits"] = self.fg_generator(mid)
        out["erased_cams"] = self.erased_cams
        return out

    def erased_cams(self, mid: torch.Tensor) -> torch.Tensor:
        """``(B, C_mid, h', w')`` -> ``(B, K, h, w)``: later layers + classifier, weights shared
        but detached, so gradients reach ``mid`` (and what made it) but not these weights."""
        later = {n: p.detach() for n, p in self.backbone.named_parameters()}
        if self.training:
            # batch statistics of the erased features, without touching the running estimates
            later.update({n: None for n, _ in self.backbone.named_buffers() if n.rsplit(".", 1)[-1] in _BN_BUFFERS})
        feats = functional_call(self.backbone, later, (mid,), {"stage": "late"})
        head = {n: p.detach() for n, p in self.classifier.named_parameters()}
        return functional_call(self.classifier, head, (feats,))
