"""Connecting to Ray: an existing cluster, or a local one kept on 127.0.0.1.

A local cluster started here never takes port 6379 (Redis's port, which ``ray start --head``
would default to): ``ray.init`` picks free ports for a cluster it starts itself. Setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray starts makes it advertise 127.0.0.1 instead
of the machine's interface address, so nothing listens beyond loopback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import MappingProxyType

import ray

__all__ = ["NAMESPACE", "SYSTEM_CONFIG", "connect_ray"]

NAMESPACE = "rayworker"
"""The Ray namespace of rayworker's named actors (router, shards, metrics)."""


SYSTEM_CONFIG: Mapping[str, object] = MappingProxyType(
    {"idle_worker_killing_time_threshold_ms": 300_000, "worker_niceness": 0}
)
"""Ray settings of a cluster started here (``k8s/`` and ``cluster.yaml`` set the same as
``RAY_<name>`` variables).

* Task workers idle for up to 5 minutes stay (Ray's default is 1 s above a soft limit of one
  per CPU, which the shard actors already fill), so the sink tasks of a pipeline with a quiet
  second do not pay a new worker process (1-2 s of CPU) each time.
* Workers run at the node's normal priority. Ray's default renices them to 15, which suits
  batch jobs, but here the workers *are* the pipeline: at nice 15 any process at normal
  priority on the node (two busy loops, in the measurement) took all but ~3 % of the CPU
  from the router and shards, and event-to-alert latency rose from 80 ms to 10-19 s.

Read-only: ``ray.init`` adds its defaults to the dict it is given, so it gets a copy.
"""


def connect_ray(
    address: str | None = None, *, namespace: str = NAMESPACE, num_cpus: int | None = None
) -> str:
    """Attach to ``address`` (or ``RAY_ADDRESS``), or start a local Ray on 127.0.0.1.

    Returns the GCS address, which other processes can pass as ``RAY_ADDRESS``. Idempotent:
    a process already connected keeps its connection.
    """
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or None
        common: dict[str, object] = {
            "namespace": namespace,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "configure_logging": False,
        }
        if target is None:
            # Workers inherit the driver's environment; without this they re-read the default.
            # "local": always a new cluster of our own; a bare init() would attach to any
            # cluster this machine happens to run.
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                num_cpus=num_cpus,
                runtime_env={"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}},
                _system_config=dict(SYSTEM_CONFIG),
                **common,  # type: ignore[arg-type]
            )
        else:
            ray.init(address=target, **common)  # type: ignore[arg-type]
    return str(ray.get_runtime_context().gcs_address)
