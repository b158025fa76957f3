"""Joining a Ray cluster or starting a local one: the one place every job connects to Ray."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

from bgwsol.config import option
from bgwsol.errors import reassert_sigterm
from bgwsol.service_start import NewChildren, did_not_start, start_with_retries

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    address: str = option("", "Ray cluster address ('auto' on a cluster node, ray://host:10001); empty: "
                              "RAY_ADDRESS if set, else a local Ray")
    num_cpus: int = option(0, "CPUs of a local Ray (0: all of this machine)")
    worker_niceness: int = option(0, "niceness of the worker processes of a local Ray: 0, like the job itself "
                                     "(Ray's own default, 15, lets any other work on the machine starve them: "
                                     "docs/local_ray.md); -1: Ray's default; ignored when joining a cluster")
    worker_start_timeout_s: float = option(600.0, "how long Ray Train waits for a worker group's processes to start "
                                                  "(Ray's default of 60 s is short for a loaded machine importing torch)")


def job_runtime_env(cfg: RayConfig) -> dict:
    """The job's runtime environment: Ray Train's settings that its controllers and workers read
    from their environment, set the way Ray documents for a job (never in ``os.environ``)."""
    return {"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{cfg.worker_start_timeout_s:g}"}}


def init_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start a local Ray (no-op if already connected).

    A local start that times out (Ray gives its raylet a fixed 30 s to register, too little on a
    cold, busy machine) is cleaned up, every process it started killed, and started again, up to
    :data:`bgwsol.service_start.START_ATTEMPTS` times, one console line per retry."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, runtime_env=job_runtime_env(cfg))
    else:
        system = {"worker_niceness": cfg.worker_niceness} if cfg.worker_niceness >= 0 else None
        start_local_ray(lambda: ray.init(num_cpus=cfg.num_cpus or None, runtime_env=job_runtime_env(cfg),
                                         _system_config=system))
    reassert_sigterm()
    log.info("Ray: %s CPUs", ray.cluster_resources().get("CPU", 0))


def start_local_ray(start: Callable[[], object]) -> None:
    """Run ``start`` (a ``ray.init`` that starts a local node) through :func:`start_with_retries`:
    a failed try is shut down and every process it started is killed before the next."""
    import ray

    started = NewChildren()

    def cleanup() -> None:
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - a node that never came up may not shut down cleanly
            log.debug("ray.shutdown after a failed start", exc_info=True)
        started.kill()

    start_with_retries("Ray's local node", start, cleanup, explain=_why_ray_did_not_start,
                       advice="rerun when the machine is less busy, or start Ray yourself (`ray start --head`) "
                              "and set RAY_ADDRESS=auto")


def _why_ray_did_not_start(exc: BaseException) -> str:
    """Ray's start failure in the words of a retry line (``"did not register within 30 s"``)."""
    if "timed out during startup" in str(exc):  # ray._private.node's fixed 30 s for the raylet
        return "did not register within 30 s"
    return did_not_start(exc)
