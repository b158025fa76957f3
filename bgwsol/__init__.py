"""bgwsol: weakly supervised object localization with background images.

The package is importable without side effects; heavy dependencies (torch, ray, mlflow)
are imported by the modules that need them, not here.
"""

__version__ = "0.1.0"
