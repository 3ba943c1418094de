"""Unit tests run without Ray: importing ``ray`` or calling ``ray.init`` fails inside ``tests/unit``.

The block covers test collection (module-level imports of the test files) and every test here; it is
lifted afterwards, so the Ray tests in ``tests/ray`` run normally in the same session.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest


def _no_ray(*args, **kwargs):
    raise RuntimeError("unit tests must not start Ray; put the test under tests/ray")


@contextlib.contextmanager
def ray_blocked() -> Iterator[None]:
    """Make ``import ray`` raise ImportError and ``ray.init`` raise RuntimeError while active."""
    real = sys.modules.get("ray")
    init = getattr(real, "init", None)
    if real is not None and init is not None:
        real.init = _no_ray
    sys.modules["ray"] = None  # type: ignore[assignment]  # makes `import ray` raise ImportError
    try:
        yield
    finally:
        if real is None:
            sys.modules.pop("ray", None)
        else:
            sys.modules["ray"] = real
            if init is not None:
                real.init = init


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    with ray_blocked():
        return (yield)


@pytest.fixture(autouse=True)
def _block_ray() -> Iterator[None]:
    with ray_blocked():
        yield
