"""Backbones in their WSOL form and the network with a classifier and a foreground head."""

from bgwsol.models.backbones import BACKBONES, build_backbone
from bgwsol.models.wsol_net import WSOLNet

__all__ = ["BACKBONES", "build_backbone", "WSOLNet"]
