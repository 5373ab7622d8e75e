"""The in-memory metrics store: the embedded default and the reference semantics.

State lives in plain dicts guarded by the event loop: every method runs to completion without
awaiting, so no lock is needed. Per-minute series buckets expire ``series_ttl_s`` after their
last write, measured on the injected :class:`~rayworker.clock.Clock` (the Redis store uses
``EXPIRE`` on every write: the same rule). Lifetime counters never expire.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Final, Self

from rayworker.clock import Clock, SystemClock
from rayworker.detect import MetricDeltas
from rayworker.errors import ConfigError
from rayworker.sinks.histogram import LatencyHistogram
from rayworker.sinks.metrics_store import (
    LatencyInput,
    MetricsSnapshot,
    WritePlan,
    check_series_name,
    minutes,
    plan_error,
    plan_record,
    snapshot_from_fields,
)

__all__ = ["MemoryMetricsStore"]

_PRUNE_EVERY: Final = timedelta(minutes=1)
_SeriesKey = tuple[str, str | None, datetime]


class MemoryMetricsStore:
    """A :class:`~rayworker.sinks.metrics_store.MetricsStore` held in memory."""

    def __init__(self, *, series_ttl_s: int = 86400 * 2, clock: Clock | None = None) -> None:
        if series_ttl_s <= 0:
            msg = f"Got {series_ttl_s} for series_ttl_s. Series retention must be > 0 seconds."
            raise ConfigError(msg)
        self._ttl = timedelta(seconds=series_ttl_s)
        self._clock: Clock = clock or SystemClock()
        self._counters: dict[str | None, Counter[str]] = {}
        self._latency: dict[str | None, LatencyHistogram] = {}
        self._series: dict[_SeriesKey, tuple[int, datetime]] = {}  # -> (count, expires at)
        self._next_prune: datetime | None = None

    def __repr__(self) -> str:
        return f"MemoryMetricsStore(tenants={sum(1 for t in self._counters if t is not None)})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release."""

    def _apply(self, plan: WritePlan) -> None:
        for scope, fields in plan.counters.items():
            self._counters.setdefault(scope, Counter()).update(fields)
        for scope, (counts, total) in plan.latency.items():
            old = self._latency.get(scope, LatencyHistogram())
            self._latency[scope] = old + LatencyHistogram(tuple(counts), total)
        now = self._clock.now()
        expires = now + self._ttl
        for name, scope, n in plan.series_items():
            key = (name, scope, plan.minute)
            count, _ = self._live(key, now)
            self._series[key] = (count + n, expires)
        if self._next_prune is None or now >= self._next_prune:
            self._series = {k: v for k, v in self._series.items() if v[1] > now}
            self._next_prune = now + _PRUNE_EVERY

    def _live(self, key: _SeriesKey, now: datetime) -> tuple[int, datetime]:
        entry = self._series.get(key)
        if entry is None or entry[1] <= now:
            return 0, now
        return entry

    async def record(
        self, deltas: MetricDeltas, *, latencies_ms: LatencyInput = (), at: datetime
    ) -> None:
        """Add one batch's deltas (and latencies in ms) at time ``at``."""
        self._apply(plan_record(deltas, latencies_ms, at))

    async def record_error(
        self, tenant: str | None, kind: str, at: datetime, *, count: int = 1
    ) -> None:
        """Count ``count`` processing errors of ``kind`` (tenant None: not attributable)."""
        self._apply(plan_error(tenant, kind, at, count))

    async def snapshot(self, tenant: str | None = None) -> MetricsSnapshot:
        """The lifetime totals of one tenant, or overall when ``tenant`` is None."""
        latency = self._latency.get(tenant, LatencyHistogram())
        return snapshot_from_fields(
            tenant, self._counters.get(tenant, Counter()), latency.to_fields()
        )

    async def snapshots(self) -> dict[str | None, MetricsSnapshot]:
        """Overall (key None) and every tenant that has recorded anything."""
        scopes: set[str | None] = {None, *self._counters, *self._latency}
        return {scope: await self.snapshot(scope) for scope in scopes}

    async def series(
        self, name: str, tenant: str | None, *, since: datetime, until: datetime
    ) -> list[tuple[datetime, int]]:
        """Per-minute counts of counter ``name`` for minutes overlapping ``[since, until)``."""
        check_series_name(name)
        now = self._clock.now()
        return [(m, self._live((name, tenant, m), now)[0]) for m in minutes(since, until)]
