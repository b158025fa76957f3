"""WSOL methods: each turns network outputs into a dict of loss terms and a score map."""

from bgwsol.methods.base import METHODS, Method, build_method

# importing the modules registers them
from bgwsol.methods import cam as _cam  # noqa: F401
from bgwsol.methods import bgwsol as _bgwsol  # noqa: F401
from bgwsol.methods import bas as _bas  # noqa: F401
from bgwsol.methods import eigencam as _eigencam  # noqa: F401

__all__ = ["METHODS", "Method", "build_method"]
