"""Deployment tests read manifests and build Serve applications without Ray; only the tests
marked ``integration`` use the shared session cluster and the live Redis."""

from __future__ import annotations

import pytest
import ray

# Imports ray.serve under the filter for Ray 2.60's pydantic deprecation warning, before any
# test module imports ray.serve directly (pytest turns warnings into errors).
import rayworker.serve_app  # noqa: F401
from tests.integration.conftest import live_redis_url, ray_cluster

__all__ = ["live_redis_url", "ray_cluster"]


@pytest.fixture(autouse=True)
def _disallow_ray_init(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any deployment test not marked ``integration`` that tries to start Ray."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        msg = "deployment tests must not start Ray: building an application needs no cluster"
        raise RuntimeError(msg)

    monkeypatch.setattr(ray, "init", refuse)
