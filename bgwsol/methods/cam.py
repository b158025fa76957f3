"""CAM (Zhou et al., CVPR 2016): classification only; the map is the class's activation map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bgwsol.methods.base import Method, class_maps, minmax, register


@register("cam")
class CAM(Method):
    needs_fg_head = False
    uses_background = False

    def losses(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        obj = labels >= 0
        cls = F.cross_entropy(outputs["logits"][obj], labels[obj])
        return {"loss": cls, "cls": cls.detach()}

    def scoremaps(self, outputs: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        return minmax(class_maps(outputs["cams"], classes))
