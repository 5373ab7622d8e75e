"""Fault drills: run a recoverable pipeline on a live stream while faults strike, and check it.

A drill produces the attack-laden synthetic workload into a Redis Stream at a set rate, runs
the stream pipeline (checkpoints on) against it while a *fault plan* kills actors, waits until
every entry is acknowledged, and reports what an operator needs to trust the result: events
in, entries acknowledged (and any acknowledged before a checkpoint covered it), alerts expected
(one detector over the same events) against alerts persisted, duplicates, lost, and the
recovery time of each fault. ``tests/integration/test_recovery.py`` asserts on it and
``bench/bench_chaos.py`` prints it on a larger input.

It needs the real services the pipeline uses (Redis, and PostgreSQL or SQLite for alerts and
checkpoints) and a Ray cluster; it deletes the stream keys it created when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import ray
import redis.asyncio as aioredis

from rayworker.alerts import AlertBook
from rayworker.checkpoint import ROUTER_OWNER, stream_position
from rayworker.clock import SystemClock
from rayworker.detect import Detector
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.pipeline.app import Pipeline, PumpStats, detector_config, load_pack
from rayworker.pipeline.sources import StreamBatches
from rayworker.settings import Settings, load_settings
from rayworker.sinks.factory import open_alert_store
from rayworker.sources.synthetic import SyntheticConfig, generate

__all__ = [
    "DrillReport",
    "FaultPlan",
    "Recovery",
    "await_recovery",
    "drill_settings",
    "drill_workload",
    "expected_alerts",
    "kill_actors",
    "run_drill",
    "stored_alerts",
]

FaultPlan = Callable[[Pipeline, Callable[[], bool]], Awaitable[None]]
"""Strikes the running pipeline; the callable says whether every entry is acknowledged."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """One fault: what was killed, and how long until the pipeline ran and made progress."""

    target: str
    recovered_s: float
    """From the kill to the router running restored in a new epoch (every shard answering)."""
    progress_s: float
    """From the kill to the next completed checkpoint (or every entry acknowledged)."""


@dataclass(slots=True)
class DrillReport:
    """The outcome of one drill."""

    events: int
    entries: int
    expected: dict[str, int]
    """Alert id -> occurrences from one detector over the same events."""
    stored: dict[str, int] = field(default_factory=dict)
    stored_rows: int = 0
    acked_uncovered: list[str] = field(default_factory=list)
    """Entries acknowledged before a complete checkpoint covered them (must be empty)."""
    recoveries: list[Recovery] = field(default_factory=list)
    pump: PumpStats | None = None
    router: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def lost(self) -> int:
        """Expected alerts missing, or stored with fewer occurrences."""
        return sum(1 for k, n in self.expected.items() if self.stored.get(k, 0) < n)

    @property
    def duplicates(self) -> int:
        """Rows beyond one per expected alert: extra ids, or more occurrences than expected."""
        extra = sum(1 for k, n in self.stored.items() if n > self.expected.get(k, 0))
        return extra + self.stored_rows - len(self.stored)


def drill_settings(redis_url: str, alerts_dsn: str, name: str, **extra: Any) -> Settings:
    """Settings of a drill pipeline: its own stream keys, metrics prefix and Ray namespace
    (all derived from ``name``), 2 shards, small batches and a checkpoint every 0.5 s."""
    return load_settings(
        alerts_dsn=alerts_dsn,
        metrics_url=redis_url,
        metrics_prefix=f"rwdrill-{name}",
        stream_url=redis_url,
        stream_key=f"rwdrill:{name}:events",
        dead_letter_stream=f"rwdrill:{name}:dead",
        consumer_group="chaos",
        consumer_name="driver",
        ray_namespace=f"rwdrill-{name}",
        shards=2,
        flush_events=1000,
        linger_ms=5,
        read_count=20,
        block_ms=20,
        checkpoint_interval_s=0.5,
        recovery_timeout_s=60,
        **extra,
    )


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
    """Acknowledges like the source, first checking each entry against the checkpoints."""

    def __init__(self, source: StreamBatches, settings: Settings, report: DrillReport) -> None:
        self.source = source
        self.settings = settings
        self.report = report

    async def __call__(self, tokens: Sequence[list[str]]) -> None:
        ids = [entry for token in tokens for entry in token]
        store: Any = await open_alert_store(self.settings)
        try:
            latest = await store.latest_checkpoint(self.settings.ray_namespace, ROUTER_OWNER)
        finally:
            await store.close()
        covered = latest.position if latest is not None else -1
        self.report.acked_uncovered += [e for e in ids if stream_position(e) > covered]
        await self.source.ack(tokens)


async def await_recovery(
    pipeline: Pipeline, before: int, killed: float, finished: Callable[[], bool]
) -> tuple[float, float]:
    """Seconds from a kill until the router runs restored in an epoch after ``before``, and
    until a checkpoint completed after that or every entry was acknowledged; raises after
    90 s."""
    recovered: float | None = None
    restored_barrier = -1
    while time.monotonic() - killed < 90:
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
            report.recoveries.append(Recovery(target, recovered, progress))
            await asyncio.sleep(rng.uniform(pause_s / 2, pause_s * 1.5))

    return plan


async def _produce(
    producer: StreamProducer,
    lines: list[bytes],
    rate: float,
    per_entry: int,
    report: DrillReport,
    produced: asyncio.Event,
) -> None:
    """XADD ``lines`` in entries of ``per_entry`` events, at most ``rate`` events/s."""
    started = time.monotonic()
    chunk = per_entry * 20
    for at in range(0, len(lines), chunk):
        ids = await producer.add_events(lines[at : at + chunk], per_entry=per_entry)
        report.entries += len(ids)
        ahead = (at + chunk) / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    produced.set()


async def run_drill(
    settings: Settings,
    lines: list[bytes],
    plan: Callable[[DrillReport], FaultPlan],
    *,
    rate: float = 4_000.0,
    per_entry: int = 100,
) -> DrillReport:
    """Produce ``lines`` at ``rate`` events/s into ``settings.stream_key`` while the pipeline
    runs and the plan strikes; stop once every entry is acknowledged, settle, and compare."""
    report = DrillReport(len(lines), 0, expected_alerts(settings, lines))
    client = aioredis.Redis.from_url(settings.stream_url.get_secret_value())
    producer = StreamProducer(client, stream=settings.stream_key)
    produced = asyncio.Event()
    finished = asyncio.Event()
    started = time.monotonic()

    pipeline = Pipeline(settings, recoverable=True)
    await pipeline.start(migrate=True)
    consumer = StreamConsumer.from_settings(settings, replays_pending=True)
    await consumer.ensure_group()
    stop = asyncio.Event()
    source = StreamBatches(consumer, stop, poison_attempts=settings.poison_attempts)

    async def until_all_acked() -> None:
        # Replays acknowledge the entries a checkpoint covers themselves, so ask Redis.
        await produced.wait()
        while True:
            with contextlib.suppress(ray.exceptions.RayActorError):
                seen = (await pipeline.router.stats.remote()).get("events", 0)
                if seen == len(lines) and (await consumer.lag()).pending == 0:
                    finished.set()
                    return
            await asyncio.sleep(0.1)

    async def strike() -> None:
        try:
            watcher = asyncio.create_task(until_all_acked())
            await plan(report)(pipeline, finished.is_set)
            await watcher
        finally:
            stop.set()

    try:
        producing = asyncio.create_task(
            _produce(producer, lines, rate, per_entry, report, produced)
        )
        striking = asyncio.create_task(strike())
        report.pump = await pipeline.pump(
            source.__aiter__(),
            ack=_CheckedAcks(source, settings, report),
            dead_letter=source.dead_letter,
            stop=stop,
            replay=source.replay,
        )
        await striking
        await producing
        await pipeline.router.finish.remote()
        report.router = await pipeline.router.stats.remote()
    finally:
        pipeline.stop()
        await consumer.close()
        await client.delete(settings.stream_key, settings.dead_letter_stream)
        await client.aclose()
    report.elapsed_s = time.monotonic() - started
    report.stored, report.stored_rows = await stored_alerts(settings, _tenants(lines))
    return report
