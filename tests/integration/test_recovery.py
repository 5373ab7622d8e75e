"""Crash recovery on real Ray, Redis and PostgreSQL: kills never lose or duplicate an alert.

The attack-laden synthetic workload flows through a Redis Stream into PostgreSQL while shards
(and once the router) are killed; every run must end with exactly the alerts `replay` gives
for the same events, with every entry acknowledged only once a checkpoint covered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import ray
import redis.asyncio as aioredis

from rayworker.alerts import AlertBook
from rayworker.checkpoint import ROUTER_OWNER, stream_position
from rayworker.clock import SystemClock
from rayworker.detect import Detector
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.pipeline.app import Pipeline, PumpStats, detector_config
from rayworker.pipeline.sources import StreamBatches
from rayworker.rules import builtin_pack
from rayworker.settings import Settings, load_settings
from rayworker.sinks.factory import open_alert_store
from rayworker.sources.synthetic import SyntheticConfig, generate

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

PER_ENTRY = 100


def _workload(events: int, seed: int) -> list[bytes]:
    # Event time ends about now, so nothing is screened as future-dated by the router.
    start = datetime.now(UTC) - timedelta(hours=1)
    config = SyntheticConfig(events=events, tenants=30, principals=3000, start=start, seed=seed)
    return list(generate(config))


def _expected(settings: Settings, lines: Sequence[bytes]) -> dict[str, int]:
    """Alert id -> occurrences from one detector over the whole stream (what `replay` does)."""
    detector = Detector(builtin_pack(), config=detector_config(settings), clock=SystemClock())
    book = AlertBook()
    for start in range(0, len(lines), 2000):
        book.update(detector.process_lines(list(lines[start : start + 2000])).alerts)
    book.update(detector.flush().alerts)
    return {a.id: a.occurrences for a in book}


async def _stored(settings: Settings) -> tuple[dict[str, int], int]:
    """Alert id -> occurrences in the store, and the number of rows (duplicates would show)."""
    store: Any = await open_alert_store(settings)
    try:
        async with store._conn("read") as conn:
            rows = await conn.fetch("SELECT id, occurrences FROM alerts")
        return {r["id"]: r["occurrences"] for r in rows}, len(rows)
    finally:
        await store.close()


def _settings(redis_url: str, pg_dsn: str, **extra: Any) -> Settings:
    token = secrets.token_hex(5)
    return load_settings(
        alerts_dsn=pg_dsn,
        metrics_url=redis_url,
        metrics_prefix=f"rwtest-{token}",
        stream_url=redis_url,
        stream_key=f"rwtest:{token}:events",
        dead_letter_stream=f"rwtest:{token}:dead",
        consumer_group="chaos",
        consumer_name="driver",
        ray_namespace=f"rwchaos-{token}",
        shards=2,
        flush_events=1000,
        linger_ms=5,
        read_count=20,
        block_ms=20,
        checkpoint_interval_s=0.5,
        recovery_timeout_s=60,
        **extra,
    )


class _Acks:
    """Acknowledges like the source does, and checks each ack against the checkpoints."""

    def __init__(self, source: StreamBatches, settings: Settings) -> None:
        self.source = source
        self.settings = settings
        self.entries: set[str] = set()
        self.uncovered: list[str] = []

    async def __call__(self, tokens: Sequence[list[str]]) -> None:
        ids = [entry for token in tokens for entry in token]
        store: Any = await open_alert_store(self.settings)
        try:
            latest = await store.latest_checkpoint(self.settings.ray_namespace, ROUTER_OWNER)
        finally:
            await store.close()
        covered = latest.position if latest is not None else -1
        self.uncovered += [e for e in ids if stream_position(e) > covered]
        await self.source.ack(tokens)
        self.entries.update(ids)


async def _run_with_faults(
    settings: Settings,
    lines: list[bytes],
    faults: Any,
    rate: float = 4_000.0,
) -> tuple[PumpStats, _Acks, dict[str, Any]]:
    """Produce ``lines`` at ``rate`` events/s while the pipeline runs and ``faults`` strike;
    stop once every entry is acknowledged, then settle the shards."""
    client = aioredis.Redis.from_url(settings.stream_url.get_secret_value())
    producer = StreamProducer(client, stream=settings.stream_key)
    chunk = PER_ENTRY * 20
    ids: list[str] = []
    produced = asyncio.Event()

    async def produce() -> None:
        started = asyncio.get_running_loop().time()
        for at in range(0, len(lines), chunk):
            ids.extend(await producer.add_events(lines[at : at + chunk], per_entry=PER_ENTRY))
            ahead = (at + chunk) / rate - (asyncio.get_running_loop().time() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        produced.set()

    pipeline = Pipeline(settings, recoverable=True)
    await pipeline.start(migrate=True)
    consumer = StreamConsumer.from_settings(settings, replays_pending=True)
    await consumer.ensure_group()
    stop = asyncio.Event()
    source = StreamBatches(consumer, stop, poison_attempts=settings.poison_attempts)
    acks = _Acks(source, settings)

    done = [False]

    async def until_all_acked() -> None:
        # Replays acknowledge entries a checkpoint covers themselves, so ask Redis.
        await produced.wait()
        while True:
            with contextlib.suppress(ray.exceptions.RayActorError):
                seen = (await pipeline.router.stats.remote()).get("events", 0)
                if seen == len(lines) and (await consumer.lag()).pending == 0:
                    done[0] = True
                    return
            await asyncio.sleep(0.1)

    async def chaos() -> None:
        try:
            watcher = asyncio.create_task(until_all_acked())
            await faults(pipeline, lambda: done[0])
            await watcher
        finally:
            stop.set()

    try:
        producer_task = asyncio.create_task(produce())
        fault_task = asyncio.create_task(chaos())
        stats = await pipeline.pump(
            source.__aiter__(),
            ack=acks,
            dead_letter=source.dead_letter,
            stop=stop,
            replay=source.replay,
        )
        await fault_task
        await producer_task
        await pipeline.router.finish.remote()
        router = await pipeline.router.stats.remote()
    finally:
        pipeline.stop()
        await consumer.close()
        keys = [
            k async for k in client.scan_iter(match=f"{settings.stream_key.rsplit(':', 1)[0]}*")
        ]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return stats, acks, router


async def _recovered(
    pipeline: Pipeline, before: int, killed: float, finished: Callable[[], bool]
) -> tuple[float, float]:
    """Seconds from the kill until the router runs restored in a new epoch, and until a new
    checkpoint completed after that, or every entry was acknowledged (progress again)."""
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
        if recovered is not None and (
            stats.get("completed_barrier", -1) > restored_barrier or finished()
        ):
            return recovered, time.monotonic() - killed
        await asyncio.sleep(0.02)
    msg = "the pipeline did not recover and checkpoint again within 90 s"
    raise AssertionError(msg)


def test_twenty_shard_kills_and_a_router_kill_converge_on_replay(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """200k events produced at 4k/s; 20 random shard kills and one router kill mid-stream:
    the stored alerts
    equal one detector's over the stream, id for id, with no duplicate row, every entry acked
    once a checkpoint covered it, and the router recovered each time."""
    settings = _settings(live_redis_url, pg_dsn)
    lines = _workload(200_000, seed=3)
    expected = _expected(settings, lines)
    rng = random.Random(11)
    kills = {"shard": 0, "router": 0}
    recovery_s: list[tuple[float, float]] = []

    async def faults(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
        await asyncio.sleep(1.0)
        for n in range(21):
            before = (await pipeline.router.stats.remote())["epoch"]
            killed = time.monotonic()
            if n == 10:
                ray.kill(pipeline.router, no_restart=False)
                kills["router"] += 1
            else:
                victim = rng.choice(list(pipeline.shards))
                ray.kill(pipeline.shards[victim], no_restart=False)
                kills["shard"] += 1
            recovery_s.append(await _recovered(pipeline, before, killed, finished))
            await asyncio.sleep(rng.uniform(0.2, 0.6))

    stats, acks, router = asyncio.run(_run_with_faults(settings, lines, faults))
    stored, rows = asyncio.run(_stored(settings))
    print(f"recovered, checkpointed again after each kill: {recovery_s}")
    assert acks.uncovered == []
    assert rows == len(stored) == len(expected)
    assert stored == expected
    assert router["events"] == len(lines)
    assert kills == {"shard": 20, "router": 1}
    assert stats.recoveries == 22  # the start, then once per kill
    assert max(r for r, _ in recovery_s) <= 15
