"""bgwsol: WSOL with background images -- our reconstruction of Kou et al. (arXiv 1909.03619).

The paper's full text is not public; these losses are the reconstruction in DESIGN.md.
``F`` backbone features, ``A`` class activation maps ``(B, K, h, w)``, ``M = sigmoid(head(F))``
the class-agnostic foreground map ``(B, 1, h, w)``.

* ``cls``    cross-entropy of ``GAP(A)`` on object images;
* ``bg``     on background images: ``BCE(M, 0)`` on every pixel (the free pixel labels) plus
             ``KL(uniform || softmax(GAP(A)))``: a background image is no class;
* ``obj``    on object images: ``BCE(M, 1)``, or with ``obj_loss="nnpu"`` the non-negative
             PU risk that treats background pixels as labelled negatives and object-image
             pixels as unlabelled with foreground prior ``class_prior``. With
             ``obj_target="cam"`` the targets are pseudo-labels from the classifier's own
             evidence instead: 1 where the true class's normalized CAM is at least ``cam_fg``,
             0 where it is at most ``cam_bg`` (pseudo-background from the object images
             themselves), the band between ignored; it switches on with ``mask``. On real
             photos "every pixel of an object image is object" teaches the head "unlike the
             background set" (studio backdrops, the ground around an animal light up);
* ``fg_cls`` cross-entropy of ``GAP(M * A)``: the foreground alone explains the class;
* ``mask``   ``BCE(minmax(A_y), stopgrad(minmax(M)))`` (or MSE): the CAM grows to the region;
* ``area``   ``mean(M)`` on object images (keeps the region tight).

``mask`` and ``fg_cls`` switch on after ``mask_warmup_epochs`` so the classifier first
learns its classes. The localization map is ``alpha * minmax(M) + (1 - alpha) * minmax(A_c)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bgwsol.methods.base import Method, class_maps, minmax, register


def _bce_logits_const(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@register("bgwsol")
class BGWSOL(Method):
    needs_fg_head = True
    uses_background = True

    def losses(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obj, bg = labels >= 0, labels < 0
        logits, cams, fg_logits = outputs["logits"], outputs["cams"], outputs["fg_logits"]
        zero = logits.new_zeros(())
        terms: dict[str, torch.Tensor] = {}

        terms["cls"] = F.cross_entropy(logits[obj], labels[obj]) if obj.any() else zero

        if bg.any():
            log_p = F.log_softmax(logits[bg], dim=1)
            kl_uniform = -log_p.mean(dim=1).mean() - math.log(logits.shape[1])
            neg_risk = _bce_logits_const(fg_logits[bg], 0.0)
            if cfg.obj_loss == "nnpu":
                neg_risk = (1 - cfg.class_prior) * neg_risk
            terms["bg"] = neg_risk + kl_uniform
        else:
            terms["bg"] = zero

        if obj.any():
            if cfg.obj_target == "cam":
                terms["obj"] = (self._cam_pseudo_label_loss(fg_logits[obj][:, 0], cams[obj], labels[obj])
                                if epoch >= cfg.mask_warmup_epochs else zero)
            elif cfg.obj_loss == "bce":
                terms["obj"] = _bce_logits_const(fg_logits[obj], 1.0)
            elif cfg.obj_loss == "nnpu":
                # unlabelled risk of calling everything positive, minus the part the known
                # negatives account for; clamped at 0 (Kiryo et al., 2017)
                pos_on_neg = _bce_logits_const(fg_logits[bg], 1.0) if bg.any() else zero
                terms["obj"] = torch.clamp(_bce_logits_const(fg_logits[obj], 1.0) - (1 - cfg.class_prior) * pos_on_neg, min=0)
            else:
                raise ValueError(f"obj_loss must be 'bce' or 'nnpu', got {cfg.obj_loss!r}")
            fg = torch.sigmoid(fg_logits[obj])  # (n, 1, h, w)
            y = labels[obj]
            terms["area"] = fg.mean()
            if epoch >= cfg.mask_warmup_epochs:
                terms["fg_cls"] = F.cross_entropy((fg * cams[obj]).mean(dim=(2, 3)), y)
                cam_y = minmax(class_maps(cams[obj], y))
                target = minmax(fg[:, 0]).detach()
                if cfg.mask_loss == "bce":
                    terms["mask"] = F.binary_cross_entropy(cam_y.clamp(1e-6, 1 - 1e-6), target)
                elif cfg.mask_loss == "mse":
                    terms["mask"] = F.mse_loss(cam_y, target)
                else:
                    raise ValueError(f"mask_loss must be 'bce' or 'mse', got {cfg.mask_loss!r}")
            else:
                terms["fg_cls"] = terms["mask"] = zero
        else:
            terms["obj"] = terms["area"] = terms["fg_cls"] = terms["mask"] = zero

        total = (terms["cls"] + cfg.lambda_bg * terms["bg"] + cfg.lambda_obj * terms["obj"]
                 + cfg.lambda_fg * terms["fg_cls"] + cfg.lambda_mask * terms["mask"] + cfg.lambda_area * terms["area"])
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}

    def _cam_pseudo_label_loss(self, fg_logits: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Balanced BCE of the foreground logits ``(n, h, w)`` against the CAM pseudo-labels of
        each image's true class (``cams`` ``(n, K, h, w)``, ``labels`` ``(n,)``): the mean over
        the object pixels plus the mean over the pseudo-background pixels, halved."""
        level = minmax(class_maps(cams, labels)).detach()
        pos, neg = level >= self.cfg.cam_fg, level <= self.cfg.cam_bg
        loss = fg_logits.new_zeros(())
        for where, target in ((pos, 1.0), (neg, 0.0)):
            if where.any():
                loss = loss + 0.5 * _bce_logits_const(fg_logits[where], target)
        return loss

    def scoremaps(self, outputs: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        a = self.cfg.alpha
        fg = minmax(torch.sigmoid(outputs["fg_logits"][:, 0]))
        return a * fg + (1 - a) * minmax(class_maps(outputs["cams"], classes))
