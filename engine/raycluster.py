"""Connecting to Ray: reuse an initialised session, else join RAY_ADDRESS, else start locally."""

import logging
import os

import ray

log = logging.getLogger("whichmodel")


def ensure_ray(num_cpus: int | None = None) -> None:
    """Initialise Ray once per process (a test session or a job may have done it already)."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    res = ray.cluster_resources()
    log.info("ray: %s CPUs, %s GPUs", res.get("CPU", 0), res.get("GPU", 0))


def cluster_cpus_gpus() -> tuple[float, float]:
    res = ray.cluster_resources()
    return float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
