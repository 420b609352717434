"""Shared fixtures: one local Ray cluster per test session (shut down at the end) and one real
embedding store built from test-written images (imageworld)."""

import pytest
from imageworld import first_run, world  # noqa: F401  (session fixtures)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (2 CPUs) for the tests that need it; only this session's processes."""
    import ray

    if not ray.is_initialized():  # an in-process engine call (ensure_ray) may have started it
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_the_end():
    """A local Ray that an in-process engine call started ends with the session too."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
