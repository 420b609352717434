"""Shared fixtures: one local Ray cluster per test session, shut down at the end."""

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (2 CPUs) for the tests that need it; only this session's processes."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
