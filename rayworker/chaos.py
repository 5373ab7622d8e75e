"""Fault drills: run a recoverable pipeline on a live stream while faults strike, and check it.

A drill produces the attack-laden synthetic workload into a Redis Stream at a set rate, runs
the stream pipeline (checkpoints on) against it while a *fault plan* strikes, waits until
every entry that can still be read is acknowledged, and reports what an operator needs to
trust the result: events in, entries acknowledged (and any acknowledged before a checkpoint
covered it), alerts expected against alerts persisted, duplicates, lost, and the recovery
time of each fault. ``tests/integration/test_recovery*.py`` and ``test_outage_redis.py``
assert on it and ``bench/bench_chaos.py`` prints it on a larger input.

Fault plans (each a factory taking the report, so it can record what it did):

* :func:`kill_actors`: kill random shards (and once the router), one after another.
* :func:`stop_postgres`: stop the alert database for ``down_s`` seconds and start it again,
  sampling the router's health and the ``/readyz`` report (:func:`rayworker.serve_app.collect`)
  while it is down.
* :func:`restart_redis`: stop the Redis holding the stream and start it again; it keeps
  nothing on disk, so the stream and its consumer group are gone.

What "correct" means. *Expected* alerts are one detector's over the events of every entry
the pipeline read (:attr:`DrillReport.delivered`), in stream order, except entries set aside
as poison. Without a Redis restart that is every entry produced, so the alerts must equal
``replay``'s over the whole input. A Redis restart that keeps nothing loses what was written
and not read yet (:attr:`DrillReport.lost_entries`: the producer knows them, no consumer can);
what the pipeline had read is still detected on exactly once (its in-flight entries are no
longer pending anywhere, which the consumer counts in ``lost_pending`` and ``acks_missed`` and
logs, but they are finished and their alerts stored unless a crash follows before a
checkpoint covers them), and
every entry written after the restart is read and detected on.

A drill needs the real services the pipeline uses (Redis, and PostgreSQL or SQLite for
alerts and checkpoints) and a Ray cluster; the private servers of :mod:`rayworker.chaos_services`
make the outages possible without touching shared ones. It deletes the stream keys it created
when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import asyncpg
import msgspec
import ray
import redis.asyncio as aioredis

from rayworker.alerts import AlertBook
from rayworker.checkpoint import ROUTER_OWNER, stream_position
from rayworker.clock import SystemClock
from rayworker.detect import Detector
from rayworker.errors import SinkError
from rayworker.ingest.redis_streams import (
    ConsumerHealth,
    IngestError,
    StreamConsumer,
    StreamEntry,
    StreamProducer,
)
from rayworker.pipeline.app import Pipeline, PumpStats, detector_config, load_pack
from rayworker.pipeline.pump import consumer_lag
from rayworker.pipeline.sources import StreamBatches
from rayworker.serve_app import collect
from rayworker.settings import Settings, load_settings
from rayworker.sinks.factory import metrics_store, open_alert_store
from rayworker.sources.synthetic import SyntheticConfig, generate

__all__ = [
    "DrillReport",
    "FaultPlan",
    "HealthSample",
    "Outage",
    "Recovery",
    "Restartable",
    "await_recovery",
    "drill_settings",
    "drill_workload",
    "expected_alerts",
    "kill_actors",
    "restart_redis",
    "run_drill",
    "stop_postgres",
    "stored_alerts",
]

FaultPlan = Callable[[Pipeline, Callable[[], bool]], Awaitable[None]]
"""Strikes the running pipeline; the callable says whether every entry is acknowledged."""

_GIVE_UP_S = 90.0
"""How long a plan waits for the pipeline to answer (or progress) again before it raises."""
_CHECK_TIMEOUT_S = 2.0
"""How long an acknowledgement waits to check the store's latest checkpoint."""
_T = TypeVar("_T")
_STALL_S = 150.0
"""How long a drill without a finish timeout waits for its acknowledgements to move at all
(events the router saw, entries pending, entries read) before it raises, saying where they
stand, instead of waiting forever."""
_WIND_DOWN_S = 120.0
"""How long each step of a drill's end (the pump draining after the stop, the router
finishing, the last reads) may take before the drill raises with every task's stack."""


class Restartable(Protocol):
    """A server a plan can stop and start (:mod:`rayworker.chaos_services`); both block."""

    def stop(self) -> None:
        """Stop the server and wait until it has."""

    def start(self) -> None:
        """Start the server and wait until it answers."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """One fault: what struck, and how long until the pipeline answered and progressed."""

    target: str
    recovered_s: float
    """From ``at`` to the pipeline answering again: for a kill, the router running restored in
    a new epoch (every shard answering); for PostgreSQL, the alert store OK in the router's
    health; for Redis, the first entry written after the restart read."""
    progress_s: float
    """From ``at`` to the next completed checkpoint (for Redis, the first covering an entry
    written after the restart), or every entry acknowledged."""
    at: float = 0.0
    """Monotonic time the clock starts: the kill, or the moment the stopped service was
    started again (an outage's own length is :attr:`Outage.down_s`)."""
    lag_s: float | None = None
    """From ``at`` to the consumer lag (pending + undelivered entries) at or under the
    drill's ``lag_threshold``; None if it never got there before the drill ended."""


@dataclass(frozen=True, slots=True)
class HealthSample:
    """What health said at one moment of an outage."""

    at_s: float
    """Seconds since the service was stopped."""
    store: str
    """The router's ``alert-store`` component status (``?`` if the router did not answer)."""
    message: str
    ready: int
    """The HTTP status ``/readyz`` would answer (200 OK/WARNING, 503 CRITICAL)."""
    components: dict[str, str]
    """Component -> status of that ``/readyz`` report."""


@dataclass(slots=True)
class Outage:
    """One stop and start of a service, as a plan saw it."""

    service: str
    down_at: float
    """Monotonic time the server had stopped."""
    down_wall_ms: int
    """Wall clock (ms) when the server had stopped: stream entries with a later id were
    written to the restarted server."""
    completed_at_down: int = -1
    """The router's completed checkpoint position once the server was down (and any save in
    flight had had its chance)."""
    completed_at_up: int = -1
    up_at: float = 0.0
    """Monotonic time the server answered again."""
    ready_s: float | None = None
    """From ``up_at`` to ``/readyz`` reporting the service (and for PostgreSQL the router's
    alert store) OK again. The overall answer may stay 503 a while longer: the processing
    component grades the p99 latency, which the outage itself raised."""
    health: list[HealthSample] = field(default_factory=list)
    acked_beyond: list[str] = field(default_factory=list)
    """Entries acknowledged while the server was down above ``completed_at_down``: nothing
    may be (no checkpoint can complete without its database)."""
    acked_during: int = 0
    stop_at: float = 0.0
    """Monotonic time the stop began (the server may answer until ``down_at``)."""

    @property
    def down_s(self) -> float:
        """How long the server was down."""
        return self.up_at - self.down_at


@dataclass(slots=True)
class DrillReport:
    """The outcome of one drill."""

    events: int
    entries: int
    expected: dict[str, int]
    """Alert id -> occurrences from one detector over the events the pipeline read (every
    event, unless a Redis restart lost some), except poison entries."""
    stored: dict[str, int] = field(default_factory=dict)
    stored_rows: int = 0
    acked_uncovered: list[str] = field(default_factory=list)
    """Entries acknowledged before a complete checkpoint covered them (must be empty)."""
    acked_unchecked: list[str] = field(default_factory=list)
    """Entries acknowledged while the store could not say its latest checkpoint (an outage);
    :attr:`unverified_acks` checks them against the outage instead."""
    recoveries: list[Recovery] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    pump: PumpStats | None = None
    router: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    written: dict[str, int] = field(default_factory=dict)
    """Entry id -> events, of every entry the producer wrote (and Redis confirmed)."""
    delivered: dict[str, int] = field(default_factory=dict)
    """Entry id -> events, of every entry the pipeline read."""
    delivered_at: dict[str, float] = field(default_factory=dict)
    """Entry id -> monotonic time it was first read."""
    acks: list[tuple[float, float, list[str]]] = field(default_factory=list)
    """(monotonic start, end, entry ids) of each acknowledgement by the pump."""
    poisoned: list[str] = field(default_factory=list)
    dead_letters: list[dict[bytes, bytes]] = field(default_factory=list)
    lag: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, pending + undelivered entries) sampled every 0.25 s."""
    lag_threshold: int = 100
    finished: bool = False
    """Every entry that could still be read was read, processed and acknowledged in time."""
    consumer: ConsumerHealth | None = None
    """The driver's consumer at the end: Redis outages, group resets, entries lost from
    pending."""
    metrics_events: int | None = None
    """Events counted by the metrics store at the end (None: it could not be read)."""

    @property
    def lost(self) -> int:
        """Expected alerts missing, or stored with fewer occurrences."""
        return sum(1 for k, n in self.expected.items() if self.stored.get(k, 0) < n)

    @property
    def duplicates(self) -> int:
        """Rows beyond one per expected alert: extra ids, or more occurrences than expected."""
        extra = sum(1 for k, n in self.stored.items() if n > self.expected.get(k, 0))
        return extra + self.stored_rows - len(self.stored)

    @property
    def delivered_events(self) -> int:
        """Events in the entries the pipeline read."""
        return sum(self.delivered.values())

    @property
    def acked_entries(self) -> int:
        """Distinct entries the pump acknowledged."""
        return len({e for _, _, ids in self.acks for e in ids})

    @property
    def lost_entries(self) -> list[str]:
        """Entries written and never read: a Redis restart took them before any consumer."""
        return sorted(set(self.written) - set(self.delivered), key=stream_position)

    @property
    def lost_events(self) -> int:
        """Events in :attr:`lost_entries`."""
        return sum(self.written[e] for e in self.lost_entries)

    def survivors(self) -> list[str]:
        """Written entries that must be read: all, or those written after the last Redis
        restart (their ids are later than the moment the old server had stopped)."""
        restarts = [o.down_wall_ms for o in self.outages if o.service == "redis"]
        if not restarts:
            return list(self.written)
        cutoff = max(restarts)
        return [e for e in self.written if _millis(e) > cutoff]

    @property
    def unverified_acks(self) -> list[str]:
        """Acknowledgements that could not be checked against the store and do not fall in
        an outage at or below its last completed checkpoint (must be empty)."""
        windows = [(o.down_at, o.up_at, o.completed_at_down) for o in self.outages]
        unchecked = set(self.acked_unchecked)
        bad: list[str] = []
        for start, _, ids in self.acks:
            for entry in ids:
                if entry not in unchecked:
                    continue
                inside = any(
                    down - _CHECK_TIMEOUT_S <= start <= up + _CHECK_TIMEOUT_S
                    and stream_position(entry) <= covered
                    for down, up, covered in windows
                )
                if not inside:
                    bad.append(entry)
        return bad


def _millis(entry_id: str) -> int:
    """The millisecond part of a stream entry id: when the server wrote it."""
    return int(entry_id.partition("-")[0])


def drill_settings(redis_url: str, alerts_dsn: str, name: str, **extra: Any) -> Settings:
    """Settings of a drill pipeline: its own stream keys, metrics prefix and Ray namespace
    (all derived from ``name``), 2 shards, small batches and a checkpoint every 0.5 s;
    ``extra`` overrides any of them."""
    defaults: dict[str, Any] = {
        "alerts_dsn": alerts_dsn,
        "metrics_url": redis_url,
        "metrics_prefix": f"rwdrill-{name}",
        "stream_url": redis_url,
        "stream_key": f"rwdrill:{name}:events",
        "dead_letter_stream": f"rwdrill:{name}:dead",
        "consumer_group": "chaos",
        "consumer_name": "driver",
        "ray_namespace": f"rwdrill-{name}",
        "shards": 2,
        "flush_events": 1000,
        "linger_ms": 5,
        "read_count": 20,
        "block_ms": 20,
        "checkpoint_interval_s": 0.5,
        "recovery_timeout_s": 60,
    }
    return load_settings(**{**defaults, **extra})


@contextlib.contextmanager
def scratch_schema(dsn: str, name: str, *, prefix: str = "rwdrill_") -> Iterator[str]:
    """``dsn`` with a PostgreSQL schema of its own (``<prefix><name>``, dropped afterwards),
    so that a drill reads back only its own alerts, however often it runs on one database;
    a DSN that names its schema already, or any other DSN (SQLite), as it is."""
    if not dsn.startswith(("postgres://", "postgresql://")) or "search_path=" in dsn:
        yield dsn
        return
    schema = prefix + re.sub(r"[^0-9a-z_]", "_", name.lower())
    asyncio.run(_execute(dsn, f"CREATE SCHEMA {schema}"))
    try:
        yield f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"
    finally:
        asyncio.run(_execute(dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def drill_workload(events: int, *, tenants: int = 30, seed: int = 3) -> list[bytes]:
    """Synthetic audit events with injected attacks, their hour of event time ending now (so
    nothing is screened as future-dated)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    principals = max(tenants, 100 * tenants)
    config = SyntheticConfig(
        events=events, tenants=tenants, principals=principals, start=start, seed=seed
    )
    return list(generate(config))


def expected_alerts(settings: Settings, lines: Sequence[bytes]) -> dict[str, int]:
    """Alert id -> occurrences from one detector over ``lines`` (what ``replay`` finds)."""
    pack, overrides = load_pack(settings)
    detector = Detector(pack, overrides, detector_config(settings), SystemClock())
    book = AlertBook()
    for start in range(0, len(lines), 2000):
        book.update(detector.process_lines(list(lines[start : start + 2000])).alerts)
    book.update(detector.flush().alerts)
    return {a.id: a.occurrences for a in book}


async def stored_alerts(settings: Settings, tenants: set[str]) -> tuple[dict[str, int], int]:
    """Alert id -> occurrences persisted for ``tenants``, and the number of rows read."""
    store = await open_alert_store(settings)
    found: dict[str, int] = {}
    rows = 0
    try:
        for tenant in sorted(tenants):
            offset = 0
            while True:
                page = await store.list(tenant, status=None, limit=500, offset=offset)
                rows += len(page)
                found.update({row.id: row.occurrences for row in page})
                if len(page) < 500:
                    break
                offset += 500
    finally:
        await store.close()
    return found, rows


def _tenants(lines: Sequence[bytes]) -> set[str]:
    decoder = msgspec.json.Decoder()
    return {str(decoder.decode(line).get("organizationId")) for line in lines}


class _CheckedAcks:
    """Acknowledges like the source, first checking each entry against the checkpoints (when
    the store answers in time; otherwise the entries are noted as unchecked)."""

    def __init__(self, source: StreamBatches, settings: Settings, report: DrillReport) -> None:
        self.source = source
        self.settings = settings
        self.report = report
        self._store: Any = None
        self._opening = asyncio.Lock()
        self._checks: set[asyncio.Task[int]] = set()

    async def __call__(self, tokens: Sequence[list[str]]) -> None:
        ids = [entry for token in tokens for entry in token]
        # Never cancelled: cancelling asyncpg mid-connect can leave its pool's close() waiting
        # forever, which stalled the drill. A check that is slow finishes in the background.
        check = asyncio.ensure_future(self._latest())
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)
        done, _ = await asyncio.wait({check}, timeout=_CHECK_TIMEOUT_S)
        covered = check.result() if done and check.exception() is None else None
        if covered is None:
            self.report.acked_unchecked += ids
        else:
            self.report.acked_uncovered += [e for e in ids if stream_position(e) > covered]
        started = time.monotonic()
        await self.source.ack(tokens)
        self.report.acks.append((started, time.monotonic(), ids))

    async def _latest(self) -> int:
        async with self._opening:
            if self._store is None:
                self._store = await open_alert_store(self.settings)
        latest = await self._store.latest_checkpoint(self.settings.ray_namespace, ROUTER_OWNER)
        return int(latest.position) if latest is not None else -1

    async def close(self) -> None:
        """Close the store once pending checks are done (giving up on them after a while)."""
        checks = [*self._checks]
        if checks:
            await asyncio.wait(checks, timeout=_CHECK_TIMEOUT_S * 5)
        for task in checks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a failed check is reported as unchecked
        if self._store is not None:
            closing = asyncio.ensure_future(self._store.close())
            await asyncio.wait({closing}, timeout=_CHECK_TIMEOUT_S * 5)


async def await_recovery(
    pipeline: Pipeline, before: int, killed: float, finished: Callable[[], bool]
) -> tuple[float, float]:
    """Seconds from a kill until the router runs restored in an epoch after ``before``, and
    until a checkpoint completed after that or every entry was acknowledged; raises after
    90 s."""
    recovered: float | None = None
    restored_barrier = -1
    while time.monotonic() - killed < _GIVE_UP_S:
        try:
            stats = await pipeline.router.stats.remote()
        except ray.exceptions.RayActorError:
            stats = {"epoch": before}
        ready = stats["epoch"] not in (before, 0) and not stats.get("recovering")
        if recovered is None and ready:
            recovered = time.monotonic() - killed
            restored_barrier = stats["completed_barrier"]
        progressed = stats.get("completed_barrier", -1) > restored_barrier or finished()
        if recovered is not None and progressed:
            return recovered, time.monotonic() - killed
        await asyncio.sleep(0.02)
    msg = "the pipeline did not recover and checkpoint again within 90 s"
    raise TimeoutError(msg)


def kill_actors(
    report: DrillReport, *, kills: int, router_at: int | None, seed: int, pause_s: float = 0.4
) -> FaultPlan:
    """A plan: ``kills`` kills of random shards (the router instead at kill ``router_at``),
    each once the pipeline has recovered from the last and made progress again."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible plan, not a secret

    async def plan(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
        await asyncio.sleep(1.0)
        for n in range(kills):
            before = (await pipeline.router.stats.remote())["epoch"]
            killed = time.monotonic()
            if n == router_at:
                target = "router"
                ray.kill(pipeline.router, no_restart=False)
            else:
                shard = rng.choice(sorted(pipeline.shards))
                target = f"shard-{shard}"
                ray.kill(pipeline.shards[shard], no_restart=False)
            recovered, progress = await await_recovery(pipeline, before, killed, finished)
            report.recoveries.append(Recovery(target, recovered, progress, at=killed))
            await asyncio.sleep(rng.uniform(pause_s / 2, pause_s * 1.5))

    return plan


async def _router_stats(pipeline: Pipeline) -> dict[str, Any]:
    stats: dict[str, Any] = await pipeline.router.stats.remote()
    return stats


async def _mid_stream(pipeline: Pipeline, after_events: int, finished: Callable[[], bool]) -> None:
    """Wait until a checkpoint completed and the router has seen ``after_events`` events."""
    while not finished():
        with contextlib.suppress(ray.exceptions.RayActorError):
            stats = await _router_stats(pipeline)
            if stats["completed_barrier"] > 0 and stats.get("events", 0) >= after_events:
                return
        await asyncio.sleep(0.05)


async def _health_sample(pipeline: Pipeline, settings: Settings, since: float) -> HealthSample:
    """The router's alert-store component and the ``/readyz`` report, now."""
    store, message = "?", "router did not answer"
    with contextlib.suppress(Exception):
        health = await asyncio.wait_for(pipeline.router.health.remote(), 5.0)
        component = health["shards"]["alert-store"]
        store, message = str(component["status"]), str(component["message"])
    ready = await collect(settings, attempts=1, retry_delay_s=0.0)
    return HealthSample(
        at_s=time.monotonic() - since,
        store=store,
        message=message,
        ready=ready.http_status,
        components={name: str(c.status) for name, c in ready.components.items()},
    )


async def _take_down(server: Restartable, service: str, report: DrillReport) -> Outage:
    stopping = time.monotonic()
    await asyncio.to_thread(server.stop)
    outage = Outage(service, time.monotonic(), time.time_ns() // 1_000_000, stop_at=stopping)
    report.outages.append(outage)
    return outage


async def _bring_up(server: Restartable, outage: Outage, pipeline: Pipeline) -> None:
    with contextlib.suppress(ray.exceptions.RayActorError):
        outage.completed_at_up = int((await _router_stats(pipeline))["completed_position"])
    await asyncio.to_thread(server.start)
    outage.up_at = time.monotonic()


async def _sample_while_down(
    pipeline: Pipeline, settings: Settings, outage: Outage, down_s: float, every_s: float
) -> None:
    """Sample health every ``every_s`` until the server has been down ``down_s`` seconds."""
    while time.monotonic() - outage.down_at < down_s:
        outage.health.append(await _health_sample(pipeline, settings, outage.down_at))
        left = down_s - (time.monotonic() - outage.down_at)
        await asyncio.sleep(max(0.0, min(every_s, left)))


async def _until_ready(
    pipeline: Pipeline, settings: Settings, outage: Outage, every_s: float
) -> None:
    """Sample health until ``/readyz`` reports the service OK again (``ready_s``), then until
    every component but ``processing`` is OK too (or give up): the stores' guards may still be
    retrying for a moment after the service answers. ``processing`` grades the p99 latency of
    every event so far, which the outage itself raised, so it stays up for a while by design.
    """
    while time.monotonic() - outage.up_at < _GIVE_UP_S:
        sample = await _health_sample(pipeline, settings, outage.down_at)
        outage.health.append(sample)
        store_ok = outage.service != "postgres" or sample.store == "OK"
        if outage.ready_s is None and sample.components.get(outage.service) == "OK" and store_ok:
            outage.ready_s = time.monotonic() - outage.up_at
        if outage.ready_s is not None and all(
            status == "OK" for name, status in sample.components.items() if name != "processing"
        ):
            return
        await asyncio.sleep(every_s)


def stop_postgres(
    report: DrillReport,
    server: Restartable,
    settings: Settings,
    *,
    down_s: float = 30.0,
    after_events: int = 10_000,
    sample_every_s: float = 1.0,
) -> FaultPlan:
    """A plan: once a checkpoint completed and ``after_events`` events were routed, stop the
    alert database (``server``, the one ``settings.alerts_dsn`` names) for ``down_s`` seconds,
    sampling health (:class:`HealthSample`) every ``sample_every_s``, and start it again;
    then time the alert store answering again, the next checkpoint and ``/readyz`` 200."""

    async def plan(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
        await _mid_stream(pipeline, after_events, finished)
        outage = await _take_down(server, "postgres", report)
        # A save already in flight may still complete while the server shuts down.
        await asyncio.sleep(0.5)
        outage.completed_at_down = int((await _router_stats(pipeline))["completed_position"])
        await _sample_while_down(pipeline, settings, outage, down_s, sample_every_s)
        await _bring_up(server, outage, pipeline)
        barrier = int((await _router_stats(pipeline))["completed_barrier"])
        recovered: float | None = None
        while time.monotonic() - outage.up_at < _GIVE_UP_S:
            health = await pipeline.router.health.remote()
            if recovered is None and health["shards"]["alert-store"]["status"] == "OK":
                recovered = time.monotonic() - outage.up_at
            progressed = health["stats"]["completed_barrier"] > barrier or finished()
            if recovered is not None and progressed:
                report.recoveries.append(
                    Recovery(
                        f"postgres {down_s:.0f} s",
                        recovered,
                        time.monotonic() - outage.up_at,
                        at=outage.up_at,
                    )
                )
                break
            await asyncio.sleep(0.05)
        else:
            msg = f"the pipeline did not recover within {_GIVE_UP_S:.0f} s of PostgreSQL's return"
            raise TimeoutError(msg)
        await _until_ready(pipeline, settings, outage, sample_every_s)

    return plan


def restart_redis(
    report: DrillReport,
    server: Restartable,
    settings: Settings,
    *,
    down_s: float = 2.0,
    after_events: int = 10_000,
    sample_every_s: float = 0.5,
) -> FaultPlan:
    """A plan: once a checkpoint completed and ``after_events`` events were routed, stop the
    Redis holding the stream (``server``, the one ``settings.stream_url`` names; it keeps
    nothing, so the stream and its group are gone) for ``down_s`` seconds, sampling health,
    and start it again; then time the first entry written after the restart being read, the
    first checkpoint covering it and ``/readyz`` 200."""

    async def plan(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
        await _mid_stream(pipeline, after_events, finished)
        outage = await _take_down(server, "redis", report)
        with contextlib.suppress(ray.exceptions.RayActorError):
            outage.completed_at_down = int((await _router_stats(pipeline))["completed_position"])
        await _sample_while_down(pipeline, settings, outage, down_s, sample_every_s)
        await _bring_up(server, outage, pipeline)
        recovered: float | None = None
        first: str | None = None
        while time.monotonic() - outage.up_at < _GIVE_UP_S:
            if first is None:
                fresh = [e for e in report.delivered if _millis(e) > outage.down_wall_ms]
                if fresh:
                    first = min(fresh, key=stream_position)
                    recovered = report.delivered_at[first] - outage.up_at
            stats = await _router_stats(pipeline)
            covered = first is not None and stats["completed_position"] >= stream_position(first)
            if recovered is not None and (covered or finished()):
                report.recoveries.append(
                    Recovery(
                        "redis restart",
                        recovered,
                        time.monotonic() - outage.up_at,
                        at=outage.up_at,
                    )
                )
                break
            if first is None and finished():
                break  # nothing was written after the restart
            await asyncio.sleep(0.05)
        else:
            msg = f"the pipeline read nothing new within {_GIVE_UP_S:.0f} s of Redis's restart"
            raise TimeoutError(msg)
        await _until_ready(pipeline, settings, outage, sample_every_s)

    return plan


def _entry_ranges(total: int, per_entry: int, alone: Collection[int]) -> list[tuple[int, int]]:
    """Line index ranges of the entries: ``per_entry`` lines each, lines in ``alone`` by
    themselves."""
    ranges: list[tuple[int, int]] = []
    start = 0
    for index in sorted({i for i in alone if 0 <= i < total}):
        ranges += [(a, min(a + per_entry, index)) for a in range(start, index, per_entry)]
        ranges.append((index, index + 1))
        start = index + 1
    ranges += [(a, min(a + per_entry, total)) for a in range(start, total, per_entry)]
    return ranges


async def _write(
    producer: StreamProducer, lines: list[bytes], chunk: list[tuple[int, int]]
) -> list[str]:
    """XADD the entries of ``chunk`` (consecutive ranges), runs of equal size together."""
    ids: list[str] = []
    run = 0
    while run < len(chunk):
        size = chunk[run][1] - chunk[run][0]
        end = run
        while end < len(chunk) and chunk[end][1] - chunk[end][0] == size:
            end += 1
        ids += await producer.add_events(lines[chunk[run][0] : chunk[end - 1][1]], per_entry=size)
        run = end
    return ids


async def _produce(
    producer: StreamProducer,
    lines: list[bytes],
    ranges: list[tuple[int, int]],
    rate: float,
    report: DrillReport,
    produced: asyncio.Event,
) -> None:
    """XADD the entries at most ``rate`` events/s, 20 per round trip; while Redis does not
    answer, retry each write (what was written to a Redis that then restarted is gone)."""
    started = time.monotonic()
    for at in range(0, len(ranges), 20):
        chunk = ranges[at : at + 20]
        while True:
            try:
                ids = await _write(producer, lines, chunk)
                break
            except IngestError:
                await asyncio.sleep(0.1)
        report.written.update({i: b - a for i, (a, b) in zip(ids, chunk, strict=True)})
        report.entries += len(ids)
        ahead = chunk[-1][1] / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    produced.set()


async def _sample_lag(settings: Settings, report: DrillReport) -> None:
    """Append (time, pending + undelivered) of the drill's group every 0.25 s."""
    client = aioredis.Redis.from_url(
        settings.stream_url.get_secret_value(), socket_connect_timeout=1, socket_timeout=2
    )
    try:
        while True:
            with contextlib.suppress(Exception):
                groups: list[dict[Any, Any]] = await client.xinfo_groups(settings.stream_key)
                for group in groups:
                    name = group["name"]
                    if (
                        name.decode() if isinstance(name, bytes) else name
                    ) == settings.consumer_group:
                        total = int(group["pending"]) + int(group.get("lag") or 0)
                        report.lag.append((time.monotonic(), total))
            await asyncio.sleep(0.25)
    finally:
        await client.aclose()


def _lag_after(report: DrillReport, at: float) -> float | None:
    for sampled, total in report.lag:
        if sampled >= at and total <= report.lag_threshold:
            return sampled - at
    return None


async def _metrics_events(settings: Settings) -> int | None:
    store = metrics_store(settings)
    try:
        return (await store.snapshot(None)).events
    except (SinkError, OSError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await store.close()


async def _wind_down(what: str, step: Awaitable[_T], timeout_s: float = _WIND_DOWN_S) -> _T:
    """Await one step of a drill's end; a step that hangs raises with where every task
    waits (a hung drill otherwise holds its caller, CI included, until it is killed)."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        stacks = _task_stacks()
        task.cancel()
        msg = f"a drill hung: {what} did not end within {timeout_s:g} s. Tasks:\n{stacks}"
        raise TimeoutError(msg)
    return task.result()


def _task_stacks() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=out)
    return out.getvalue()


class _Progress:
    """Whether a drill's acknowledgements still move: :meth:`stalled` is True once the
    observed state has stayed the same for more than ``limit_s``."""

    def __init__(self, now: float, limit_s: float = _STALL_S) -> None:
        self.limit_s = limit_s
        self._last: tuple[Any, ...] | None = None
        self._moved_at = now

    def stalled(self, state: tuple[Any, ...], now: float) -> bool:
        """Note ``state`` at ``now``; True when it has not changed for too long."""
        if state != self._last:
            self._last, self._moved_at = state, now
            return False
        return now - self._moved_at > self.limit_s


def _stalled(
    report: DrillReport, source: StreamBatches, stats: dict[str, Any], pending: int | None
) -> str:
    """Why a drill stopped moving, as far as it can tell: what was read and seen, what is
    pending, what the router reports, and whether the cluster has room for the sink tasks."""
    poisoned = sum(report.delivered.get(e, 0) for e in source.poisoned_entries)
    unread = [e for e in report.survivors() if e not in report.delivered]
    cpu = "unknown (Ray not connected)"
    if ray.is_initialized():
        resources: Any = ray  # ray's resource calls are untyped
        free = resources.available_resources().get("CPU", 0.0)
        cpu = f"{free:g} of {resources.cluster_resources().get('CPU', 0.0):g}"
    router = {
        k: stats.get(k)
        for k in (
            "events",
            "buffered",
            "queued_batches",
            "inflight_batches",
            "persisting_batches",
            "open_tickets",
            "epoch",
            "recovering",
            "scaling",
            "shards",
            "errors",
        )
    }
    return (
        f"a drill stalled: nothing moved for {_STALL_S:g} s. The router saw "
        f"{stats.get('events')} of the {report.delivered_events - poisoned:,} events read; "
        f"{pending} entries pending; {len(unread):,} surviving entries never read; free CPU "
        f"{cpu}; router {router}. Tasks:\n{_task_stacks()}"
    )


async def run_drill(  # noqa: PLR0915 - one drill's tasks share their bookkeeping
    settings: Settings,
    lines: list[bytes],
    plan: Callable[[DrillReport], FaultPlan],
    *,
    rate: float = 4_000.0,
    per_entry: int = 100,
    alone: Collection[int] = (),
    finish_timeout_s: float | None = None,
    lag_threshold: int = 100,
) -> DrillReport:
    """Produce ``lines`` at ``rate`` events/s into ``settings.stream_key`` while the pipeline
    runs and the plan strikes; stop once every entry that can still be read is acknowledged,
    settle, and compare.

    ``alone``: indexes of lines written as an entry of their own (a poison event, say).
    ``finish_timeout_s``: give up waiting for the last acknowledgements after this long
    (None: wait as long as it takes); :attr:`DrillReport.finished` says whether it got there.
    ``lag_threshold``: the consumer lag (entries) a fault's ``lag_s`` waits for.
    """
    report = DrillReport(len(lines), 0, {}, lag_threshold=lag_threshold)
    ranges = _entry_ranges(len(lines), per_entry, alone)
    # Timeouts: a write caught by a Redis restart must fail (and be retried), not hang.
    client = aioredis.Redis.from_url(
        settings.stream_url.get_secret_value(), socket_connect_timeout=2, socket_timeout=10
    )
    producer = StreamProducer(client, stream=settings.stream_key)
    produced = asyncio.Event()
    finished = asyncio.Event()
    started = time.monotonic()
    read_lines: dict[str, list[bytes]] = {}

    def observe(entries: Sequence[StreamEntry]) -> None:
        now = time.monotonic()
        for entry in entries:
            if entry.entry_id not in report.delivered:
                report.delivered[entry.entry_id] = len(entry.lines)
                report.delivered_at[entry.entry_id] = now
                read_lines[entry.entry_id] = entry.lines

    pipeline = Pipeline(settings, recoverable=True)
    await pipeline.start(migrate=True)
    consumer = StreamConsumer.from_settings(settings, replays_pending=True)
    await consumer.ensure_group()
    stop = asyncio.Event()
    source = StreamBatches(
        consumer, stop, poison_attempts=settings.poison_attempts, observe=observe
    )

    def settled(seen: int, pending: int) -> bool:
        poisoned = sum(report.delivered.get(e, 0) for e in source.poisoned_entries)
        if pending or seen != report.delivered_events - poisoned:
            return False
        return all(e in report.delivered for e in report.survivors())

    async def until_all_acked() -> None:
        # Replays acknowledge the entries a checkpoint covers themselves, so ask Redis.
        await produced.wait()
        progress = _Progress(time.monotonic())
        stats: dict[str, Any] = {}
        pending: int | None = None
        while finish_timeout_s is None or time.monotonic() - started < finish_timeout_s:
            # Each check is bounded: one call that never answers (a lost reply) must not keep
            # the drill past finish_timeout_s, since the stop waits for this loop.
            with contextlib.suppress(ray.exceptions.RayActorError, IngestError, TimeoutError):
                stats = await asyncio.wait_for(_router_stats(pipeline), _CHECK_TIMEOUT_S * 5)
                pending = (await asyncio.wait_for(consumer.lag(), _CHECK_TIMEOUT_S * 5)).pending
                if settled(stats.get("events", 0), pending):
                    finished.set()
                    return
            state = (stats.get("events"), pending, report.delivered_events)
            if progress.stalled(state, time.monotonic()) and finish_timeout_s is None:
                raise TimeoutError(_stalled(report, source, stats, pending))
            await asyncio.sleep(0.1)

    async def strike() -> None:
        watcher: asyncio.Future[None] = asyncio.create_task(until_all_acked())
        faults: asyncio.Future[None] = asyncio.ensure_future(
            plan(report)(pipeline, finished.is_set)
        )
        try:
            # Both run to the end unless one raises: a stalled drill stops its plan too.
            await asyncio.wait({watcher, faults}, return_when=asyncio.FIRST_EXCEPTION)
            for task in (watcher, faults):
                failure = task.exception() if task.done() else None
                if failure is not None:
                    raise failure
            await faults
            await watcher
        finally:
            for task in (watcher, faults):
                task.cancel()
            stop.set()

    checked = _CheckedAcks(source, settings, report)
    sampler = asyncio.create_task(_sample_lag(settings, report))
    producing = asyncio.create_task(_produce(producer, lines, ranges, rate, report, produced))
    striking = asyncio.create_task(strike())
    pumping = asyncio.create_task(
        pipeline.pump(
            source.__aiter__(),
            ack=checked,
            dead_letter=source.dead_letter,
            stop=stop,
            replay=source.replay,
            lag=consumer_lag(consumer),
        )
    )
    stopped = asyncio.create_task(stop.wait())
    # With a finish timeout, the stop comes by then, or a plan's give-up time later.
    stop_by = None if finish_timeout_s is None else finish_timeout_s + _GIVE_UP_S + _WIND_DOWN_S
    try:
        done, _ = await asyncio.wait(
            {pumping, stopped},
            timeout=None if stop_by is None else stop_by - (time.monotonic() - started),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not done:
            msg = f"a drill hung: no stop within {stop_by:g} s. Tasks:\n{_task_stacks()}"
            raise TimeoutError(msg)
        report.pump = await _wind_down("the pump's drain after the stop", pumping)
        await _wind_down("the fault plan", striking)
        await _wind_down("the producer", producing)
        await _wind_down("router.finish", pipeline.router.finish.remote())
        report.router = await _wind_down("router.stats", _router_stats(pipeline))
        # redis-py types the reply as a union; without decode_responses it is all bytes.
        records: Any = await _wind_down("XRANGE", client.xrange(settings.dead_letter_stream))
        report.dead_letters = [fields for _, fields in records]
    except Exception as exc:
        # Say what the router saw: the errors behind a failed drill are in its counters.
        with contextlib.suppress(Exception):
            stats = await asyncio.wait_for(_router_stats(pipeline), 5.0)
            exc.add_note(f"router errors: {stats.get('errors')}, epoch {stats.get('epoch')}")
        raise
    finally:
        for task in (sampler, producing, striking, pumping, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if pipeline.router is not None:
            pipeline.stop()
        await checked.close()
        report.consumer = consumer.health()
        await consumer.close()
        with contextlib.suppress(Exception):
            await client.delete(settings.stream_key, settings.dead_letter_stream)
        await client.aclose()
    report.elapsed_s = time.monotonic() - started
    report.finished = finished.is_set()
    report.poisoned = list(source.poisoned_entries)
    for outage in report.outages:
        during = [
            e
            for begun, _, ids in report.acks
            if outage.down_at <= begun < outage.up_at
            for e in ids
        ]
        outage.acked_during = len(during)
        outage.acked_beyond = [e for e in during if stream_position(e) > outage.completed_at_down]
    report.recoveries = [
        dataclasses.replace(r, lag_s=_lag_after(report, r.at)) for r in report.recoveries
    ]
    poisoned = set(report.poisoned)
    detected = [
        line
        for entry in sorted(read_lines, key=stream_position)
        if entry not in poisoned
        for line in read_lines[entry]
    ]
    report.expected = expected_alerts(settings, detected)
    report.stored, report.stored_rows = await stored_alerts(settings, _tenants(lines))
    report.metrics_events = await _metrics_events(settings)
    return report
