"""Pipeline metrics through Ray's metrics system (``ray.util.metrics``).

Every Ray node exports these on its metrics agent, which a KubeRay deployment's Prometheus
scrapes (PodMonitor on the ``metrics`` port). Ray prefixes the names with ``ray_`` and adds
``_total`` to counters, so ``rayworker_events`` is scraped as ``ray_rayworker_events_total``.
The same figures, per tenant and without Ray, are on the Serve ``/metrics`` endpoint.

Instruments are created lazily, once per process, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ray.util import metrics

from rayworker.detect import MetricDeltas

__all__ = ["BATCH_BOUNDS_S", "PipelineMetrics"]

BATCH_BOUNDS_S: Final = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
"""Histogram bucket bounds for batch latencies, in seconds."""


class PipelineMetrics:
    """The instruments one process records; each method is a few dictionary look-ups."""

    _instance: PipelineMetrics | None = None

    def __init__(self) -> None:
        tenant = ("tenant",)
        self.events = metrics.Counter(
            "rayworker_events", "Audit events received, per tenant.", tenant
        )
        self.rejected = metrics.Counter(
            "rayworker_events_rejected",
            "Events rejected at validation, per tenant and reason.",
            ("tenant", "reason"),
        )
        self.late = metrics.Counter("rayworker_events_late", "Late events, per tenant.", tenant)
        self.alerts = metrics.Counter(
            "rayworker_alerts",
            "Alerts created, per tenant, rule and severity.",
            ("tenant", "rule", "severity"),
        )
        self.batch_seconds = metrics.Histogram(
            "rayworker_batch_duration_seconds",
            "Time from a source batch's arrival at the router until all its alerts are stored.",
            BATCH_BOUNDS_S,
        )
        self.detect_seconds = metrics.Histogram(
            "rayworker_detect_duration_seconds",
            "Time a shard spends detecting over one routed batch.",
            BATCH_BOUNDS_S,
            ("shard",),
        )
        self.key_groups = metrics.Gauge(
            "rayworker_shard_key_groups", "Key groups assigned to each shard.", ("shard",)
        )
        self.active_keys = metrics.Gauge(
            "rayworker_shard_active_keys", "Keys with window state on each shard.", ("shard",)
        )
        self.consumer_lag = metrics.Gauge(
            "rayworker_consumer_lag_entries",
            "Stream entries not yet acknowledged by the consumer group (pending + undelivered).",
            ("stream", "group"),
        )

    @classmethod
    def get(cls) -> PipelineMetrics:
        """This process's instruments (created on first use)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def record(self, deltas: MetricDeltas) -> None:
        """Add one flush's per-tenant counts (events, rejections, late events, alerts)."""
        for tenant, n in deltas.events.items():
            self.events.inc(n, {"tenant": tenant})
        for (scope, reason), n in deltas.rejected.items():
            self.rejected.inc(n, {"tenant": scope or "", "reason": reason})
        for tenant, n in deltas.late.items():
            self.late.inc(n, {"tenant": tenant})
        self.alerts_created(deltas.alerts)

    def alerts_created(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Count alerts created, keyed by (tenant, rule, severity)."""
        for (tenant, rule, severity), n in counts.items():
            self.alerts.inc(n, {"tenant": tenant, "rule": rule, "severity": severity})

    def shard_state(self, shard: int, key_groups: int | None, active_keys: int) -> None:
        """Set a shard's gauges."""
        tags = {"shard": str(shard)}
        if key_groups is not None:
            self.key_groups.set(key_groups, tags)
        self.active_keys.set(active_keys, tags)

    def lag(self, stream: str, group: str, entries: int) -> None:
        """Set the consumer group's lag."""
        self.consumer_lag.set(entries, {"stream": stream, "group": group})

    def observe(
        self, histogram: Any, seconds: float, tags: Mapping[str, str] | None = None
    ) -> None:
        """Record one latency in ``histogram``."""
        histogram.observe(seconds, dict(tags) if tags else None)
