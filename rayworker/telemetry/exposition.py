"""Pipeline metrics for the Serve ``/metrics`` endpoint, beside the per-tenant ones.

:func:`rayworker.health.render_prometheus` renders the metrics store's per-tenant counters
and latency histogram. This module adds what only the running pipeline knows, read from the
health report the endpoint already collects (the router's ``stats`` and the stream ``lag``):

``<prefix>_router_events_total``                 events the router received
``<prefix>_shard_events_total{shard}``           events routed to each shard
``<prefix>_shard_key_groups{shard}``             key groups each shard owns
``<prefix>_router_handoffs_total``               key-group hand-offs (rescales, load balances)
``<prefix>_assignment_version``                  version of the key-group assignment in use
``<prefix>_router_buffered_events``              events waiting in shard buffers
``<prefix>_router_queued_batches``               batches waiting for a shard slot
``<prefix>_router_inflight_batches``             batches a shard has not answered yet
``<prefix>_router_open_batches``                 source batches not finished yet
``<prefix>_batch_duration_seconds``              histogram: a source batch's arrival at the
                                                 router until all its alerts are stored
``<prefix>_consumer_lag_entries{stream,group}``  stream entries not yet delivered
``<prefix>_consumer_pending_entries{stream,group}``  delivered entries not yet acknowledged
``<prefix>_checkpoint_age_seconds``              since the last complete checkpoint began
``<prefix>_checkpoint_failures_total``           checkpoints that did not complete
``<prefix>_checkpoint_bytes``                    size of the last complete checkpoint

The checkpoint families appear only for a pipeline that checkpoints (``rayworker run`` reading
a stream): its entries are acknowledged only behind a complete checkpoint, so a growing age
means growing pending entries and a longer replay after a crash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from rayworker.health import HealthReport
from rayworker.sinks.histogram import BOUNDS_MS, LatencyHistogram

__all__ = ["render_pipeline"]

_NAME_INVALID: Final = re.compile(r"[^a-zA-Z0-9_:]")

_ROUTER_GAUGES: Final = (
    ("buffered", "router_buffered_events", "Events waiting in the router's shard buffers."),
    ("queued_batches", "router_queued_batches", "Routed batches waiting for a shard slot."),
    ("inflight_batches", "router_inflight_batches", "Routed batches a shard has not answered."),
    ("open_tickets", "router_open_batches", "Source batches not finished yet."),
    ("assignment_version", "assignment_version", "Version of the key-group assignment in use."),
)


def _prefix(prefix: str) -> str:
    cleaned = _NAME_INVALID.sub("_", prefix)
    return f"_{cleaned}" if cleaned[:1].isdigit() else cleaned


class _PipelineCollector(Collector):
    def __init__(self, report: HealthReport, prefix: str) -> None:
        self.report = report
        self.prefix = _prefix(prefix)

    def collect(self) -> Iterator[Metric]:
        router = self.report.components.get("router")
        stats = router.detail.get("stats") if router is not None else None
        if isinstance(stats, Mapping):
            yield from self._router(stats)
            yield from self._checkpoints(stats)
        lag = self.report.components.get("lag")
        if lag is not None and "pending" in lag.detail:
            yield from self._lag(lag.detail)
        dead = self.report.components.get("dead_letters")
        if dead is not None and "length" in dead.detail:
            yield from self._dead_letters(dead.detail)
        failed = self.report.components.get("failed_notifications")
        if failed is not None and "length" in failed.detail:
            yield from self._failed_notifications(failed.detail)

    def _failed_notifications(self, detail: Mapping[str, Any]) -> Iterator[Metric]:
        return self._held_records(
            detail,
            "store",
            (
                "failed_notifications",
                "Notifications held in the notifier's dead-letter store (not delivered).",
            ),
            (
                "failed_notification_newest_age_seconds",
                "Seconds since the newest notification was dead-lettered.",
            ),
        )

    def _dead_letters(self, detail: Mapping[str, Any]) -> Iterator[Metric]:
        return self._held_records(
            detail,
            "stream",
            (
                "dead_letter_entries",
                "Records in the dead-letter stream (rejected, late and poison events).",
            ),
            (
                "dead_letter_newest_age_seconds",
                "Seconds since the newest record reached the dead-letter stream.",
            ),
        )

    def _held_records(
        self,
        detail: Mapping[str, Any],
        label: str,
        count: tuple[str, str],
        age: tuple[str, str],
    ) -> Iterator[Metric]:
        """A dead-letter store's record count and its newest record's age (when it has
        one), labelled by the store; ``count``/``age``: each family's name and help."""
        values = [str(detail.get(label, ""))]
        held = GaugeMetricFamily(f"{self.prefix}_{count[0]}", count[1], labels=[label])
        held.add_metric(values, int(detail["length"]))
        yield held
        if detail.get("newest_age_s") is not None:
            newest = GaugeMetricFamily(f"{self.prefix}_{age[0]}", age[1], labels=[label])
            newest.add_metric(values, float(detail["newest_age_s"]))
            yield newest

    def _router(self, stats: Mapping[str, Any]) -> Iterator[Metric]:
        p = self.prefix
        yield CounterMetricFamily(
            f"{p}_router_events", "Events the router received.", value=int(stats.get("events", 0))
        )
        sent = CounterMetricFamily(
            f"{p}_shard_events", "Events routed to each shard.", labels=["shard"]
        )
        for shard, n in sorted((stats.get("sent") or {}).items()):
            sent.add_metric([str(shard)], int(n))
        yield sent
        groups = GaugeMetricFamily(
            f"{p}_shard_key_groups", "Key groups each shard owns.", labels=["shard"]
        )
        for shard, n in sorted((stats.get("key_groups") or {}).items()):
            groups.add_metric([str(shard)], int(n))
        yield groups
        yield CounterMetricFamily(
            f"{p}_router_handoffs",
            "Key-group hand-offs between shards (rescales and load balances).",
            value=int(stats.get("rescales", 0)),
        )
        for key, name, help_text in _ROUTER_GAUGES:
            yield GaugeMetricFamily(f"{p}_{name}", help_text, value=int(stats.get(key, 0)))
        fields = stats.get("batch_latency_ms")
        if isinstance(fields, Mapping):
            hist = LatencyHistogram.from_fields(fields)
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound_ms, n in zip((*BOUNDS_MS, math.inf), hist.counts, strict=True):
                cumulative += n
                le = "+Inf" if math.isinf(bound_ms) else repr(bound_ms / 1000.0)
                buckets.append((le, cumulative))
            yield HistogramMetricFamily(
                f"{p}_batch_duration_seconds",
                "Time from a source batch's arrival at the router until all its alerts are stored.",
                buckets=buckets,
                sum_value=hist.sum_ms / 1000.0,
            )

    def _checkpoints(self, stats: Mapping[str, Any]) -> Iterator[Metric]:
        barrier = int(stats.get("completed_barrier") or 0)
        if barrier <= 0:
            return
        p = self.prefix
        # Barrier ids start from the wall clock in milliseconds when the barrier begins.
        age = max(0.0, self.report.at.timestamp() - barrier / 1000.0)
        yield GaugeMetricFamily(
            f"{p}_checkpoint_age_seconds",
            "Seconds since the last complete checkpoint began.",
            value=age,
        )
        yield CounterMetricFamily(
            f"{p}_checkpoint_failures",
            "Checkpoints that did not complete.",
            value=int(stats.get("barrier_failures", 0)),
        )
        yield GaugeMetricFamily(
            f"{p}_checkpoint_bytes",
            "Size of the last complete checkpoint.",
            value=int(stats.get("checkpoint_bytes", 0)),
        )

    def _lag(self, detail: Mapping[str, Any]) -> Iterator[Metric]:
        labels = ["stream", "group"]
        values = [str(detail.get("stream", "")), str(detail.get("group", ""))]
        pending = GaugeMetricFamily(
            f"{self.prefix}_consumer_pending_entries",
            "Stream entries delivered to the consumer group and not acknowledged yet.",
            labels=labels,
        )
        pending.add_metric(values, int(detail.get("pending") or 0))
        yield pending
        if detail.get("lag") is not None:
            lag = GaugeMetricFamily(
                f"{self.prefix}_consumer_lag_entries",
                "Stream entries not delivered to the consumer group yet.",
                labels=labels,
            )
            lag.add_metric(values, int(detail["lag"]))
            yield lag


def render_pipeline(report: HealthReport | None, *, prefix: str = "rayworker") -> str:
    """The pipeline families in the Prometheus text format 0.0.4 ('' without a report)."""
    if report is None:
        return ""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PipelineCollector(report, prefix))
    return generate_latest(registry).decode("utf-8")
