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
    worker_start_timeout_s: float = option(600.0, "how long Ray Train waits for a worker group's processes to start "
                                                  "(Ray's default of 60 s is short for a loaded machine importing torch)")


def job_runtime_env(cfg: RayConfig) -> dict:
    """The job's runtime environment: Ray Train's settings that its controllers and workers read
    from their environment, set the way Ray documents for a job (never in ``os.environ``)."""
    return {"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{cfg.worker_start_timeout_s:g}"}}


def init_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start a local Ray (no-op if already connected)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    from bgwsol.errors import reassert_sigterm

    if address:
        ray.init(address=address, runtime_env=job_runtime_env(cfg))
    else:
        ray.init(num_cpus=cfg.num_cpus or None, runtime_env=job_runtime_env(cfg))
    reassert_sigterm()
    log.info("Ray: %s CPUs", ray.cluster_resources().get("CPU", 0))
