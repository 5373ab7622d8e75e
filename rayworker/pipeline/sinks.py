"""Stateless Ray tasks that persist alerts and write metrics, and the in-memory metrics actor.

Each worker process keeps one event loop and, per DSN, one open store (an asyncpg pool, a
SQLite connection or a Redis pool) across the tasks it runs, so a task costs one round trip
to the database, not a connection set-up. Tasks hold no state that matters: a retried task
repeats an idempotent upsert (alerts merge monotonically by id) or a counter increment
(metrics; a retry after a partial failure can over-count, which Ray's ``max_retries`` limits
to transient errors only).

The embedded default keeps metrics in memory; memory in a task process would vanish, so
that backend lives in one named actor (:class:`MetricsActor`) instead.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import ray
from opentelemetry.trace import SpanKind

from rayworker.alerts import Alert, PackedAlerts, unpacked
from rayworker.checkpoint import Checkpoint
from rayworker.detect import MetricDeltas
from rayworker.errors import SinkError
from rayworker.settings import Settings
from rayworker.sinks.alert_store import AlertStore
from rayworker.sinks.factory import alert_store, metrics_store
from rayworker.sinks.memory_metrics import MemoryMetricsStore
from rayworker.sinks.metrics_store import LatencyInput, MetricsStore
from rayworker.telemetry.propagation import Carrier, context_of
from rayworker.telemetry.setup import flush_tracing, setup_process
from rayworker.telemetry.spans import tracer

__all__ = [
    "METRICS_ACTOR",
    "MetricsActor",
    "clear_checkpoints",
    "flush_sink_telemetry",
    "latest_checkpoint",
    "load_checkpoint_state",
    "persist_alert_batches",
    "persist_alerts",
    "prune_checkpoints",
    "record_error",
    "record_metrics",
    "run_in_worker_loop",
    "save_checkpoint",
]

METRICS_ACTOR = "rayworker-metrics"
_TRANSIENT: list[type[Exception]] = [SinkError, OSError]
"""Errors worth retrying a sink task for: an unreachable or overloaded store."""

_loop: asyncio.AbstractEventLoop | None = None
_alert_stores: dict[str, AlertStore] = {}
_metric_stores: dict[str, MetricsStore] = {}


def run_in_worker_loop(coro: Any) -> Any:
    """Run a coroutine on this process's one long-lived event loop."""
    global _loop  # noqa: PLW0603 - one loop per worker process is the point
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coro)


async def _alerts(settings: Settings) -> AlertStore:
    key = settings.alerts_dsn.get_secret_value()
    store = _alert_stores.get(key)
    if store is None:
        opened = alert_store(settings)
        await opened.open(migrate=False)
        store = _alert_stores[key] = opened
    return store


async def _metrics(settings: Settings) -> MetricsStore:
    key = settings.metrics_url.get_secret_value() + "|" + settings.metrics_prefix
    store = _metric_stores.get(key)
    if store is None:
        store = _metric_stores[key] = metrics_store(settings)
    return store


def _telemetry(settings: Settings) -> bool:
    """Set up this worker process's tracing and logs once (Ray starts it bare)."""
    return setup_process(
        settings.telemetry, component="sink", node=ray.get_runtime_context().get_node_id()
    )


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def persist_alerts(
    settings: Settings, alerts: list[Alert] | PackedAlerts, trace: Carrier | None = None
) -> int:
    """Upsert a batch of alerts (idempotent by alert id); returns how many rows changed.

    ``trace``: the context of the shard's ``rayworker.detect`` span; the upsert runs in a
    ``rayworker.persist`` span under it. ``alerts`` may be passed as the ObjectRef of a
    shard's packed alerts (Ray hands the task the object).
    """
    return _upsert(settings, unpacked(alerts), trace)


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def persist_alert_batches(settings: Settings, *batches: list[Alert] | PackedAlerts) -> int:
    """Upsert several batches of alerts in one statement (the router's group commit); each
    is usually the ObjectRef of one shard answer's alerts, so they go from the shards'
    nodes straight to this worker, never through the router."""
    return _upsert(settings, [alert for batch in batches for alert in unpacked(batch)], None)


def _upsert(settings: Settings, alerts: list[Alert], trace: Carrier | None) -> int:
    async def run() -> int:
        store = await _alerts(settings)
        return await store.upsert(alerts)

    # Set up even when this batch is untraced: the warm-up tasks then pay for it, not the
    # first traced batch.
    if not _telemetry(settings) or trace is None:
        result: int = run_in_worker_loop(run())
        return result
    with tracer().start_as_current_span(
        "rayworker.persist",
        context=context_of(trace),
        kind=SpanKind.CLIENT,
        attributes={
            "db.system": settings.alerts_backend,
            "db.operation": "upsert",
            "rayworker.alerts": len(alerts),
        },
    ) as span:
        result = run_in_worker_loop(run())
        span.set_attribute("rayworker.rows_changed", result)
    return result


@ray.remote(num_cpus=0)
def flush_sink_telemetry(settings: Settings) -> bool:
    """Export the finished spans of the sink worker process this task lands on."""
    _telemetry(settings)
    return flush_tracing()


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def record_metrics(settings: Settings, deltas: MetricDeltas, latencies_ms: LatencyInput) -> None:
    """Add one flush's metric deltas and latencies to Redis, in one pipelined round trip."""

    async def run() -> None:
        store = await _metrics(settings)
        await store.record(deltas, latencies_ms=latencies_ms, at=datetime.now(UTC))

    run_in_worker_loop(run())


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def record_error(settings: Settings, tenant: str | None, kind: str, count: int = 1) -> None:
    """Count a processing error (a failed persist, a crashed shard call, ...)."""

    async def run() -> None:
        store = await _metrics(settings)
        await store.record_error(tenant, kind, datetime.now(UTC), count=count)

    run_in_worker_loop(run())


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def save_checkpoint(
    settings: Settings, owner: str, barrier: int, position: int, state: bytes
) -> int:
    """Write one state holder's checkpoint to the alert store's database; returns its size.

    ``state`` is usually passed as the ObjectRef of a shard's ``checkpoint`` call, so the
    bytes go from the shard's node straight to this worker, not through the router.
    """

    async def run() -> None:
        store: Any = await _alerts(settings)
        await store.save_checkpoint(
            settings.ray_namespace, Checkpoint(owner, barrier, position, state)
        )

    run_in_worker_loop(run())
    return len(state)


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def latest_checkpoint(settings: Settings, owner: str) -> Checkpoint | None:
    """The owner's newest checkpoint (the router's marks the latest complete barrier)."""

    async def run() -> Checkpoint | None:
        store: Any = await _alerts(settings)
        found: Checkpoint | None = await store.latest_checkpoint(settings.ray_namespace, owner)
        return found

    result: Checkpoint | None = run_in_worker_loop(run())
    return result


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def load_checkpoint_state(settings: Settings, owner: str, barrier: int) -> bytes:
    """The state bytes of the owner's checkpoint of ``barrier``; raises if it is missing."""

    async def run() -> Checkpoint | None:
        store: Any = await _alerts(settings)
        found: Checkpoint | None = await store.load_checkpoint(
            settings.ray_namespace, owner, barrier
        )
        return found

    found: Checkpoint | None = run_in_worker_loop(run())
    if found is None:
        msg = (
            f"checkpoint of {owner} at barrier {barrier} is missing from the alert store; "
            "its database was changed by hand: start afresh with `rayworker run --fresh-state`"
        )
        raise SinkError(msg)
    return found.state


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def prune_checkpoints(settings: Settings, below: int) -> int:
    """Delete checkpoints of barriers older than ``below``; returns rows deleted."""

    async def run() -> int:
        store: Any = await _alerts(settings)
        deleted: int = await store.prune_checkpoints(settings.ray_namespace, below)
        return deleted

    result: int = run_in_worker_loop(run())
    return result


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=_TRANSIENT)  # type: ignore[call-overload, untyped-decorator]
def clear_checkpoints(settings: Settings) -> int:
    """Delete all of this pipeline's checkpoints (``--fresh-state``); returns rows deleted."""

    async def run() -> int:
        store: Any = await _alerts(settings)
        deleted: int = await store.clear_checkpoints(settings.ray_namespace)
        return deleted

    result: int = run_in_worker_loop(run())
    return result


class MetricsActor:
    """The in-memory metrics store as one named actor (the embedded default)."""

    def __init__(self, series_ttl_s: int) -> None:
        self.store = MemoryMetricsStore(series_ttl_s=series_ttl_s)

    async def record(self, deltas: MetricDeltas, latencies_ms: LatencyInput) -> None:
        """Add deltas and latencies."""
        await self.store.record(deltas, latencies_ms=latencies_ms, at=datetime.now(UTC))

    async def record_error(self, tenant: str | None, kind: str, count: int = 1) -> None:
        """Count processing errors."""
        await self.store.record_error(tenant, kind, datetime.now(UTC), count=count)

    async def snapshot(self, tenant: str | None = None) -> dict[str, object]:
        """Totals of a tenant (or overall) in ``MetricsSnapshot.to_json`` form."""
        return (await self.store.snapshot(tenant)).to_json()

    async def snapshots(self) -> list[tuple[str | None, dict[str, object]]]:
        """Overall (None) and every tenant's totals, in ``MetricsSnapshot.to_json`` form."""
        return [(scope, snap.to_json()) for scope, snap in (await self.store.snapshots()).items()]
