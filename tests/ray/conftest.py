"""Ray tests share one private local Ray per session (starting Ray costs seconds)."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message=".*token.*authentication.*")


@pytest.fixture(scope="session", autouse=True)
def ray_session():
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", namespace="rayfs", include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False, num_cpus=2)
        started = True
    yield
    if started:
        ray.shutdown()
