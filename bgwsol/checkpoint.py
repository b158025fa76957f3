"""The checkpoint format every path writes and reads, and the network a checkpoint rebuilds.

One file, ``checkpoint.pt`` (a ``torch.save`` dict), written by the training engine each
epoch (locally or through Ray Train), read back by resume, logged to MLflow by the registry
(in its inference form) and loaded by ``bgwsol localize``. It sits below training, tracking
and serving so that none of them imports another for it.

Keys: ``model`` (state dict), ``config`` (the resolved RunConfig as a dict), ``classes``,
``class_names``, ``manifest`` (the dataset manifest's SHA-256), ``epoch``, ``best_score``,
``mlflow_run_id``; while training also ``optimizer``, ``scheduler``, ``rng``, ``history``
(:data:`TRAINING_ONLY`); once thresholds are chosen on validation ``taus`` (IoU percent -> τ).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bgwsol.config import RunConfig, run_config_from_dict

CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_ONLY = ("optimizer", "scheduler", "rng", "history")


def save_checkpoint(state: dict, directory: str | Path) -> Path:
    """Write ``state`` as ``directory/checkpoint.pt``; returns the file."""
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint state from ``checkpoint.pt`` or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    return torch.load(path, map_location=map_location, weights_only=False)


def inference_state(state: dict, taus: dict[int, float] | None = None, mask_tau: float | None = None) -> dict:
    """``state`` without what only training needs, with the operating thresholds ``taus`` (IoU
    percent -> box threshold) and ``mask_tau`` (the mask threshold, where validation had masks)."""
    slim = {k: v for k, v in state.items() if k not in TRAINING_ONLY}
    if taus is not None:
        slim["taus"] = {int(k): float(v) for k, v in taus.items()}
    if mask_tau is not None:
        slim["mask_tau"] = float(mask_tau)
    return slim


def build_model(cfg: RunConfig, num_classes: int, method) -> torch.nn.Module:
    """The backbone of ``cfg.model`` in the network ``method`` trains (WSOLNet, or e.g. BAS's BASNet)."""
    from bgwsol.models import build_backbone

    backbone = build_backbone(cfg.model.backbone, weights=cfg.model.weights or None)
    if cfg.model.frozen_layers:
        backbone.freeze(cfg.model.frozen_layers)
    return method.build_network(backbone, num_classes, cfg.model)


def model_from_state(state: dict):
    """``(network in eval mode on CPU, its Method, its RunConfig)`` of a checkpoint state."""
    from bgwsol.methods import build_method

    cfg = run_config_from_dict(state["config"])
    method = build_method(cfg.method)
    model = build_model(cfg, len(state["classes"]), method)
    model.load_state_dict(state["model"])
    return model.eval(), method, cfg
