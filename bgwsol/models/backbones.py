"""torchvision backbones cut and re-strided the way WSOL papers use them.

Each builder returns a module mapping images ``(B, 3, H, W)`` to features ``(B, C, h, w)``
and exposes ``out_channels`` and ``stride``. Pretrained weights come only from a local
file (``weights=Path``); nothing is downloaded.

| name        | what                                                   | stride | maps at 224 |
|-------------|--------------------------------------------------------|--------|-------------|
| resnet18    | torchvision ResNet-18, layer4 stride 1                 | 16     | 14 x 14     |
| resnet50    | torchvision ResNet-50, layer4 stride 1                 | 16     | 14 x 14     |
| vgg16       | VGG16 conv layers without pool5, plus conv 512->1024   | 16     | 14 x 14     |
| inception_v3| InceptionV3 through Mixed_6e, plus conv 768->1024      | ~16    | 12 x 12     |
| tiny        | a 4-stage ResNet of torchvision BasicBlocks, 32..256 ch | 8      | 28 x 28     |

``tiny`` exists for CPU runs, tests and the synthetic benchmark (at 112 px it gives the
14 x 14 maps a ResNet-50 gives at 224 px).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

log = logging.getLogger(__name__)


class _Features(nn.Module):
    """Wraps a feature extractor with its channel count and output stride."""

    def __init__(self, body: nn.Module, out_channels: int, stride: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def load_local_weights(module: nn.Module, path: str | Path) -> None:
    """Load a torchvision-style state dict from ``path`` (non-strict: heads are new).

    Logs which keys were missing or unexpected; raises FileNotFoundError with the path
    if it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    result = module.load_state_dict(state, strict=False)
    log.info("loaded %s: %d missing keys, %d unexpected keys", path, len(result.missing_keys), len(result.unexpected_keys))


def _resnet(builder: Callable[..., tvm.ResNet], weights: str | Path | None) -> _Features:
    net = builder(weights=None)
    if weights is not None:
        load_local_weights(net, weights)
    block = net.layer4[0]
    # torchvision puts the stride on conv1 (BasicBlock) or conv2 (Bottleneck, "ResNet v1.5")
    for conv in (block.conv1, getattr(block, "conv2", None)):
        if conv is not None and conv.stride == (2, 2):
            conv.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return _Features(body, net.fc.in_features, 16)


def resnet18(*, weights: str | Path | None = None) -> _Features:
    """ResNet-18 with layer4 stride 1 (512 channels, stride 16)."""
    return _resnet(tvm.resnet18, weights)


def resnet50(*, weights: str | Path | None = None) -> _Features:
    """ResNet-50 with layer4 stride 1 (2048 channels, stride 16)."""
    return _resnet(tvm.resnet50, weights)


def vgg16(*, weights: str | Path | None = None) -> _Features:
    """VGG16 conv layers without pool5, plus a 3x3 conv to 1024 channels (stride 16)."""
    net = tvm.vgg16(weights=None)
    if weights is not None:
        load_local_weights(net, weights)
    convs = list(net.features.children())[:-1]  # drop pool5
    body = nn.Sequential(*convs, nn.Conv2d(512, 1024, 3, padding=1), nn.ReLU(inplace=True))
    return _Features(body, 1024, 16)


def inception_v3(*, weights: str | Path | None = None) -> _Features:
    """InceptionV3 through Mixed_6e plus a 3x3 conv to 1024 channels."""
    net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
    if weights is not None:
        load_local_weights(net, weights)
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]
    body = nn.Sequential(*(getattr(net, n) for n in names), nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(inplace=True))
    return _Features(body, 1024, 16)


def tiny(*, weights: str | Path | None = None, widths: tuple[int, ...] = (32, 64, 128, 256)) -> _Features:
    """Small ResNet (one torchvision BasicBlock per stage), stride 8, for CPU runs."""

    def stage(cin: int, cout: int, stride: int) -> BasicBlock:
        down = None
        if stride != 1 or cin != cout:
            down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        return BasicBlock(cin, cout, stride=stride, downsample=down)

    w = widths
    body = nn.Sequential(
        nn.Conv2d(3, w[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True),
        stage(w[0], w[0], 1), stage(w[0], w[1], 2), stage(w[1], w[2], 2), stage(w[2], w[3], 1),
    )
    feats = _Features(body, w[3], 8)
    if weights is not None:
        load_local_weights(feats, weights)
    return feats


BACKBONES: dict[str, Callable[..., _Features]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "inception_v3": inception_v3,
    "tiny": tiny,
}


def build_backbone(name: str, *, weights: str | Path | None = None) -> _Features:
    """Build a registered backbone by name; unknown names list the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return BACKBONES[name](weights=weights)
