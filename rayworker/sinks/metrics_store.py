"""The metrics store seam: the :class:`MetricsStore` Protocol, :class:`MetricsSnapshot` and the
pure write plan shared by its implementations.

Two implementations honour the same contract (one contract test runs against both):
:class:`~rayworker.sinks.memory_metrics.MemoryMetricsStore` (the embedded default) and
:class:`~rayworker.sinks.redis_metrics.RedisMetricsStore`.

Contract
    * :meth:`MetricsStore.record` adds one batch's :class:`~rayworker.detect.MetricDeltas` (and
      optionally processing latencies) to lifetime counters **per tenant and overall**, and to
      per-minute series (the minute of ``at``). Counters only ever grow; rates and "recent"
      views come from :meth:`MetricsStore.series`, never from lifetime totals.
    * A tenant's snapshot holds only what was recorded for that tenant. The overall snapshot
      (``tenant=None``) is the sum of all tenants **plus** what belongs to no tenant:
      rejections with ``tenant=None`` (an event too broken to name its tenant), errors
      recorded with ``tenant=None`` and latencies passed as a plain sequence.
    * Latency is a fixed-bucket histogram (:mod:`rayworker.sinks.histogram`); p50/p95/p99
      are interpolated within a bucket, so they are exact only to the bucket resolution.
    * ``error_rate = errors / events`` (0.0 when there are no events).
    * Series are per-minute buckets in UTC; each bucket lives ``series_ttl_s`` after its last
      write. :meth:`MetricsStore.series` returns every minute overlapping ``[since, until)``,
      zeros included.
    * Times must be timezone-aware; a naive time raises :class:`QueryError`.

The write plan (:func:`plan_record`) turns a call into the increments to apply, so the stores
share one definition of *what* is counted and differ only in *where* it is kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from rayworker.detect import MetricDeltas
from rayworker.sinks.alert_store import QueryError
from rayworker.sinks.histogram import LatencyHistogram

__all__ = [
    "COUNTERS",
    "MAX_SERIES_MINUTES",
    "LatencyInput",
    "MetricsSnapshot",
    "MetricsStore",
    "WritePlan",
    "check_series_name",
    "floor_minute",
    "minutes",
    "plan_error",
    "plan_record",
    "require_aware",
    "snapshot_from_fields",
]

COUNTERS: Final[tuple[str, ...]] = (
    "events",
    "rejected",
    "late",
    "alerts",
    "alert_updates",
    "naive_timestamps",
    "duplicates",
    "state_capped",
    "errors",
    "integrity_violations",
)
"""Names of the lifetime counters; each also has a per-minute series of the same name."""

MAX_SERIES_MINUTES: Final = 7 * 24 * 60
"""The longest range :meth:`MetricsStore.series` answers in one call (7 days of minutes)."""

LatencyInput = Sequence[float] | Mapping[str, Sequence[float] | LatencyHistogram]
"""Latencies in ms: a plain sequence counts overall only; a mapping tenant -> latencies (or
their histogram, which is what a busy router sends: one latency per event would cost more to
ship and bucket than detecting them) counts per tenant and overall."""

_REJECTED: Final = "rejected:"
_RULE: Final = "alerts:rule:"
_SEV: Final = "alerts:sev:"
_ERRORS: Final = "errors:"


class MetricsStore(Protocol):
    """Where metric deltas and latencies go; see the module docstring for the contract."""

    async def record(
        self, deltas: MetricDeltas, *, latencies_ms: LatencyInput = (), at: datetime
    ) -> None:
        """Add one batch's deltas (and latencies in ms) at time ``at``, in one round trip."""
        ...

    async def record_error(
        self, tenant: str | None, kind: str, at: datetime, *, count: int = 1
    ) -> None:
        """Count ``count`` processing errors of ``kind`` (tenant None: not attributable)."""
        ...

    async def snapshot(self, tenant: str | None = None) -> MetricsSnapshot:
        """The lifetime totals of one tenant, or overall when ``tenant`` is None."""
        ...

    async def snapshots(self) -> dict[str | None, MetricsSnapshot]:
        """Overall (key None) and every tenant that has recorded anything, in one read."""
        ...

    async def series(
        self, name: str, tenant: str | None, *, since: datetime, until: datetime
    ) -> list[tuple[datetime, int]]:
        """Per-minute counts of counter ``name`` for minutes overlapping ``[since, until)``."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


@dataclass(frozen=True)
class MetricsSnapshot:
    """Lifetime totals of one tenant (or overall, ``tenant=None``) at one moment."""

    tenant: str | None
    events: int = 0
    rejected: int = 0
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    late: int = 0
    alerts: int = 0
    alerts_by_rule: Mapping[str, int] = field(default_factory=dict)
    alerts_by_severity: Mapping[str, int] = field(default_factory=dict)
    alert_updates: int = 0
    duplicates: int = 0
    naive_timestamps: int = 0
    state_capped: int = 0
    integrity_violations: int = 0
    """Events whose ``hash`` or ``signature`` failed verification (:mod:`rayworker.integrity`)."""
    errors: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def suspicious_patterns(self) -> int:
        """Alerts created (the original's ``suspiciousPatterns``); updates are not counted."""
        return self.alerts

    @property
    def error_rate(self) -> float:
        """``errors / events``; 0.0 when no events were processed."""
        return self.errors / self.events if self.events else 0.0

    @property
    def p50(self) -> float:
        """Median processing latency in ms, interpolated within its bucket."""
        return self.latency.p50

    @property
    def p95(self) -> float:
        """95th percentile processing latency in ms, interpolated within its bucket."""
        return self.latency.p95

    @property
    def p99(self) -> float:
        """99th percentile processing latency in ms, interpolated within its bucket."""
        return self.latency.p99

    def to_json(self) -> dict[str, object]:
        """The snapshot as a JSON-ready dict (for health endpoints and the CLI)."""
        return {
            "tenant": self.tenant,
            "events": self.events,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "late": self.late,
            "alerts": self.alerts,
            "alerts_by_rule": dict(self.alerts_by_rule),
            "alerts_by_severity": dict(self.alerts_by_severity),
            "alert_updates": self.alert_updates,
            "suspicious_patterns": self.suspicious_patterns,
            "duplicates": self.duplicates,
            "naive_timestamps": self.naive_timestamps,
            "state_capped": self.state_capped,
            "integrity_violations": self.integrity_violations,
            "errors": self.errors,
            "errors_by_kind": dict(self.errors_by_kind),
            "error_rate": self.error_rate,
            "latency_ms": {
                "count": self.latency.count,
                "mean": self.latency.mean_ms,
                "p50": self.p50,
                "p95": self.p95,
                "p99": self.p99,
                "buckets": [
                    ["+Inf" if b == float("inf") else b, n] for b, n in self.latency.buckets
                ],
            },
        }


def snapshot_from_fields(
    tenant: str | None,
    counters: Mapping[str, str | int],
    latency: Mapping[str, str | int | float],
) -> MetricsSnapshot:
    """Build a snapshot from stored counter fields and latency fields (missing: 0)."""
    values = {k: int(v) for k, v in counters.items()}

    def by(prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in sorted(values.items()) if k.startswith(prefix)}

    return MetricsSnapshot(
        tenant=tenant,
        events=values.get("events", 0),
        rejected=values.get("rejected", 0),
        rejected_by_reason=by(_REJECTED),
        late=values.get("late", 0),
        alerts=values.get("alerts", 0),
        alerts_by_rule=by(_RULE),
        alerts_by_severity=by(_SEV),
        alert_updates=values.get("alert_updates", 0),
        duplicates=values.get("duplicates", 0),
        naive_timestamps=values.get("naive_timestamps", 0),
        state_capped=values.get("state_capped", 0),
        integrity_violations=values.get("integrity_violations", 0),
        errors=values.get("errors", 0),
        errors_by_kind=by(_ERRORS),
        latency=LatencyHistogram.from_fields(latency),
    )


# --------------------------------------------------------------------------- time


def require_aware(at: datetime, name: str) -> datetime:
    """``at`` in UTC; raises :class:`QueryError` for a naive datetime."""
    if at.tzinfo is None or at.utcoffset() is None:
        msg = f"Got a naive datetime for {name} ({at.isoformat()}). Pass tzinfo=UTC."
        raise QueryError(msg)
    return at.astimezone(UTC)


def floor_minute(at: datetime) -> datetime:
    """The start of ``at``'s minute, in UTC."""
    return require_aware(at, "at").replace(second=0, microsecond=0)


def minutes(since: datetime, until: datetime) -> list[datetime]:
    """The minute buckets overlapping ``[since, until)``, oldest first (bounded)."""
    begin = require_aware(since, "since")
    end = require_aware(until, "until")
    if end < begin:
        msg = f"Got since={since.isoformat()} after until={until.isoformat()}; swap them."
        raise QueryError(msg)
    if end == begin:
        return []
    start = floor_minute(begin)
    n = -(-int((end - start).total_seconds() * 1_000_000) // 60_000_000)  # ceil, exact in us
    if n > MAX_SERIES_MINUTES:
        msg = (
            f"Got a range of {n} minutes for series(); ask for at most {MAX_SERIES_MINUTES}"
            " minutes (7 days) per call."
        )
        raise QueryError(msg)
    return [start + timedelta(minutes=i) for i in range(n)]


def check_series_name(name: str) -> None:
    """Raise :class:`QueryError` unless ``name`` is one of :data:`COUNTERS`."""
    if name not in COUNTERS:
        msg = f"Got {name!r} for the series name. Use one of: {', '.join(COUNTERS)}."
        raise QueryError(msg)


# --------------------------------------------------------------------------- write plan


@dataclass
class WritePlan:
    """The increments of one call. Scope ``None`` is the overall total."""

    minute: datetime
    counters: dict[str | None, Counter[str]] = field(default_factory=dict)
    latency: dict[str | None, tuple[list[int], float]] = field(default_factory=dict)
    series: dict[tuple[str, str | None], int] = field(default_factory=dict)

    def add(self, tenant: str | None, name: str, n: int, *details: str) -> None:
        """Count ``n`` on ``name`` (and on each detail field) for the tenant and overall."""
        if n < 0:
            msg = f"Got a negative count ({n}) for {name}. Metric deltas only ever grow."
            raise QueryError(msg)
        if n == 0:
            return
        scopes = (None,) if tenant is None else (tenant, None)
        for scope in scopes:
            fields = self.counters.setdefault(scope, Counter())
            fields[name] += n
            for detail in details:
                fields[detail] += n
            key = (name, scope)
            self.series[key] = self.series.get(key, 0) + n

    def add_latency(
        self, tenant: str | None, latencies_ms: Sequence[float] | LatencyHistogram
    ) -> None:
        """Count latencies (or a histogram of them) for the tenant (if any) and overall."""
        histogram = (
            latencies_ms
            if isinstance(latencies_ms, LatencyHistogram)
            else LatencyHistogram.of(latencies_ms)
        )
        if not histogram.count:
            return
        counts, total = list(histogram.counts), histogram.sum_ms
        scopes = (None,) if tenant is None else (tenant, None)
        for scope in scopes:
            old_counts, old_total = self.latency.get(scope, ([0] * len(counts), 0.0))
            merged = [a + b for a, b in zip(old_counts, counts, strict=True)]
            self.latency[scope] = (merged, old_total + total)

    def series_items(self) -> Iterator[tuple[str, str | None, int]]:
        """``(name, scope, increment)`` for the minute of this plan."""
        for (name, scope), n in self.series.items():
            yield name, scope, n


def plan_record(deltas: MetricDeltas, latencies_ms: LatencyInput, at: datetime) -> WritePlan:
    """What :meth:`MetricsStore.record` adds, per tenant and overall."""
    plan = WritePlan(minute=floor_minute(at))
    for tenant, n in deltas.events.items():
        plan.add(tenant, "events", n)
    for (tenant_or_none, reason), n in deltas.rejected.items():
        plan.add(tenant_or_none, "rejected", n, _REJECTED + reason)
    for tenant, n in deltas.late.items():
        plan.add(tenant, "late", n)
    for (tenant, rule, severity), n in deltas.alerts.items():
        plan.add(tenant, "alerts", n, _RULE + rule, _SEV + severity)
    for (tenant, _rule), n in deltas.alert_updates.items():
        plan.add(tenant, "alert_updates", n)
    for tenant, n in deltas.naive_timestamps.items():
        plan.add(tenant, "naive_timestamps", n)
    for tenant, n in deltas.duplicates.items():
        plan.add(tenant, "duplicates", n)
    for tenant, n in deltas.state_capped.items():
        plan.add(tenant, "state_capped", n)
    for tenant, n in deltas.integrity_violations.items():
        plan.add(tenant, "integrity_violations", n)
    if isinstance(latencies_ms, Mapping):
        for tenant, values in latencies_ms.items():
            plan.add_latency(tenant, values)
    else:
        plan.add_latency(None, latencies_ms)
    return plan


def plan_error(tenant: str | None, kind: str, at: datetime, count: int = 1) -> WritePlan:
    """What :meth:`MetricsStore.record_error` adds, for the tenant (if any) and overall."""
    if not kind:
        msg = "Got an empty error kind. Name the kind of error, e.g. 'alert_sink'."
        raise QueryError(msg)
    plan = WritePlan(minute=floor_minute(at))
    plan.add(tenant, "errors", count, _ERRORS + kind)
    return plan
