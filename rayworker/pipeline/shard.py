"""A detector shard: the pure :class:`~rayworker.detect.Detector` behind a Ray actor.

A shard owns a set of key groups (which ones is the router's business: it only sends a shard
the events whose keys it owns) and holds the windows of every tenant whose keys fall in them.
It is a plain class; :func:`shard_actor` wraps it with ``ray.remote`` so it runs as one
single-threaded actor process: calls from the router run one at a time, in the order sent,
which keeps every key's events in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from rayworker.alerts import Alert
from rayworker.clock import SystemClock
from rayworker.detect import Detector, DetectorConfig, MetricDeltas
from rayworker.partition import ShardBatch
from rayworker.rules import Overrides, RulePack

__all__ = ["DetectorShard", "ShardOutput", "shard_actor", "shard_name"]


def shard_name(shard: int) -> str:
    """The Ray actor name of shard ``shard``."""
    return f"rayworker-shard-{shard}"


@dataclass(slots=True)
class ShardOutput:
    """What one batch produced: alerts changed (latest state) and metric deltas."""

    alerts: list[Alert] = field(default_factory=list)
    metrics: MetricDeltas = field(default_factory=MetricDeltas)
    events: int = 0
    busy_s: float = 0.0


class DetectorShard:
    """Runs routed batches through one detector and reports on itself."""

    def __init__(
        self,
        shard: int,
        pack: RulePack,
        overrides: Overrides | None,
        config: DetectorConfig,
        snapshot: dict[str, Any] | None = None,
    ) -> None:
        # The router already screened for future timestamps against its own clock.
        shard_config = DetectorConfig(
            allowed_lateness_s=config.allowed_lateness_s,
            suppression_s=config.suppression_s,
            max_future_s=None,
            evidence_cap=config.evidence_cap,
            naive_timestamps=config.naive_timestamps,
            max_events_per_key=config.max_events_per_key,
        )
        self.shard = shard
        if snapshot is None:
            self.detector = Detector(pack, overrides, shard_config, SystemClock())
        else:
            self.detector = Detector.restore(pack, snapshot, overrides, shard_config)
        self.events = 0
        self.batches = 0
        self.alerts = 0
        self.busy_s = 0.0
        self.last_batch_at: float | None = None
        self.started_at = time.time()

    def process(self, batch: ShardBatch) -> ShardOutput:
        """Detect over one routed batch."""
        started = time.perf_counter()
        result = self.detector.process_routed(
            batch.lines(), batch.wm_after, batch.owned, batch.watermarks
        )
        busy = time.perf_counter() - started
        self.events += len(batch)
        self.batches += 1
        self.alerts += len(result.alerts)
        self.busy_s += busy
        self.last_batch_at = time.time()
        return ShardOutput(result.alerts, result.metrics, len(batch), busy)

    def flush(self) -> ShardOutput:
        """End of input: settle everything pending (used at the end of a bounded run)."""
        result = self.detector.flush()
        return ShardOutput(result.alerts, result.metrics)

    def snapshot(self) -> dict[str, Any]:
        """The detector's state as plain data."""
        return self.detector.snapshot()

    def stats(self) -> dict[str, Any]:
        """Counters for health and benchmarks."""
        return {
            "shard": self.shard,
            "events": self.events,
            "batches": self.batches,
            "alerts": self.alerts,
            "active_keys": self.detector.active_keys(),
            "busy_s": round(self.busy_s, 3),
            "last_batch_at": self.last_batch_at,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def ping(self) -> int:
        """Liveness: answers with the shard number."""
        return self.shard


def shard_actor(
    shard: int,
    pack: RulePack,
    overrides: Overrides | None,
    config: DetectorConfig,
    *,
    num_cpus: float,
    namespace: str,
) -> Any:
    """Start shard ``shard`` as a named, detached-free actor, spread across nodes."""
    remote_cls = ray.remote(DetectorShard)
    return remote_cls.options(
        name=shard_name(shard),
        namespace=namespace,
        num_cpus=num_cpus,
        scheduling_strategy="SPREAD",
        max_restarts=0,
    ).remote(shard, pack, overrides, config)
