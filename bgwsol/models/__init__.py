"""Backbones in their WSOL form and the networks: classifier + foreground head (WSOLNet), BAS's (BASNet)."""

from bgwsol.models.backbones import BACKBONES, build_backbone
from bgwsol.models.bas_net import BASNet
from bgwsol.models.wsol_net import WSOLNet

__all__ = ["BACKBONES", "BASNet", "build_backbone", "WSOLNet"]
