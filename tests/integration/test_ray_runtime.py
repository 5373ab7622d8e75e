"""The local Ray cluster rayworker starts runs its workers as the pipeline needs them."""

from __future__ import annotations

import os

import pytest
import ray


@ray.remote
def _task_niceness() -> int:
    return os.nice(0)


@ray.remote
class _Probe:
    def niceness(self) -> int:
        return os.nice(0)


@pytest.mark.skipif("RAY_ADDRESS" in os.environ, reason="an external cluster has its own config")
def test_workers_run_at_the_drivers_priority(ray_cluster: str) -> None:
    """Task and actor workers are not reniced (Ray's default would make them nice 15)."""
    probe = _Probe.remote()  # type: ignore[attr-defined]
    try:
        assert ray.get(_task_niceness.remote()) == os.nice(0)
        assert ray.get(probe.niceness.remote()) == os.nice(0)
    finally:
        ray.kill(probe)
