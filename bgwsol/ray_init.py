"""Joining a Ray cluster or starting a local one: the one place every job connects to Ray."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from bgwsol.config import option

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    address: str = option("", "Ray cluster address ('auto' on a cluster node, ray://host:10001); empty: "
                              "RAY_ADDRESS if set, else a local Ray")
    num_cpus: int = option(0, "CPUs of a local Ray (0: all of this machine)")



def init_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start a local Ray (no-op if already connected)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    from bgwsol.errors import reassert_sigterm

    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=cfg.num_cpus or None)
    reassert_sigterm()
    log.info("Ray: %s CPUs", ray.cluster_resources().get("CPU", 0))
