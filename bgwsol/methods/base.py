"""Method registry: ``@register("name")`` on a :class:`Method` subclass, ``build_method`` by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from bgwsol.config import MethodConfig, ModelConfig

METHODS: dict[str, type["Method"]] = {}


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def deco(cls: type["Method"]) -> type["Method"]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


class Method:
    """A WSOL method: which network parts it needs, its losses and its localization map.

    Subclasses set ``needs_fg_head`` and ``uses_background`` and implement :meth:`losses`
    and :meth:`scoremaps`; one that needs another network overrides :meth:`build_network`.
    A post-hoc method (a map computed from another method's trained model) names that
    method in ``post_hoc_of``: comparisons score it on that method's runs instead of training it.
    """

    name: str = ""
    needs_fg_head: bool = False
    uses_background: bool = False
    post_hoc_of: str | None = None

    def __init__(self, cfg: "MethodConfig"):
        self.cfg = cfg

    def build_network(self, backbone: torch.nn.Module, num_classes: int, model_cfg: "ModelConfig") -> torch.nn.Module:
        """The network this method trains: by default a :class:`~bgwsol.models.WSOLNet`, with
        the foreground head when ``needs_fg_head``."""
        from bgwsol.models import WSOLNet

        return WSOLNet(backbone, num_classes, fg_head=self.needs_fg_head, fg_grad_scale=model_cfg.fg_grad_scale)

    def losses(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """Loss terms for a batch; ``labels`` ``(B,)`` with -1 for background images.

        Returns a dict whose ``"loss"`` is the weighted total and whose other entries are
        the unweighted terms (for logging).
        """
        raise NotImplementedError

    def scoremaps(self, outputs: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        """Localization maps ``(B, h, w)`` for the given classes ``(B,)``, min-max normalized to [0, 1]."""
        raise NotImplementedError


def build_method(cfg: "MethodConfig") -> Method:
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; known: {sorted(METHODS)}")
    return METHODS[cfg.name](cfg)


def minmax(maps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-map min-max normalization of ``(B, h, w)`` to [0, 1]."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    return (maps - lo) / (hi - lo + eps)


def class_maps(cams: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Pick each image's class map: ``(B, K, h, w)``, ``(B,)`` -> ``(B, h, w)``."""
    return cams[torch.arange(cams.shape[0], device=cams.device), classes]
