"""The local Ray cluster rayworker starts runs its workers as the pipeline needs them."""

from __future__ import annotations

import os

import pytest
import ray

from rayworker.pipeline.runtime import SYSTEM_CONFIG


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


def test_starting_ray_leaves_the_system_config_as_written(ray_cluster: str) -> None:
    """ray.init fills in its defaults on a copy, not on rayworker's SYSTEM_CONFIG."""
    assert dict(SYSTEM_CONFIG) == {
        "idle_worker_killing_time_threshold_ms": 300_000,
        "worker_niceness": 0,
    }
