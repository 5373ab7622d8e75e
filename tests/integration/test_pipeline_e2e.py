"""End to end on real Ray, Redis and PostgreSQL: the pipeline's alerts equal `replay`'s."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import pytest
import ray
import redis.asyncio as aioredis

from rayworker.alerts import AlertBook
from rayworker.chaos import drill_settings
from rayworker.clock import SystemClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.pipeline.app import Pipeline
from rayworker.pipeline.sinks import METRICS_ACTOR
from rayworker.pipeline.sources import StreamBatches, paced_batches
from rayworker.rules import builtin_pack
from rayworker.settings import Settings, load_settings
from rayworker.sinks.factory import open_alert_store
from rayworker.sources.synthetic import SyntheticConfig, generate
from tests.integration.conftest import pump_until_read

pytestmark = pytest.mark.integration

BAD_LINES = [
    b'{"timestamp": "2026-01-05T10:00:00Z", "action": "x", "status": "failure"}',
    b"not json at all",
    b'{"timestamp": "yesterday", "action": "x", "status": "failure", "organizationId": "t"}',
]


def _sample() -> list[bytes]:
    data = resources.files("rayworker").joinpath("data/sample_events.jsonl").read_bytes()
    return [line for line in data.splitlines() if line.strip()]


@dataclass(frozen=True)
class Expected:
    """What `replay` finds in the bundled sample."""

    book: AlertBook
    rejected: int

    @property
    def occurrences(self) -> dict[str, int]:
        return {a.id: a.occurrences for a in self.book}

    @property
    def tenants(self) -> set[str]:
        return {a.tenant_id for a in self.book}


def _replay(lines: list[bytes]) -> Expected:
    detector = Detector(builtin_pack(), config=DetectorConfig(), clock=SystemClock())
    book = AlertBook()
    rejected = 0
    for start in range(0, len(lines), 1000):
        result = detector.process_lines(lines[start : start + 1000])
        book.update(result.alerts)
        rejected += len(result.rejections)
    book.update(detector.flush().alerts)
    return Expected(book, rejected)


async def _stored(settings: Settings, tenants: set[str]) -> dict[str, int]:
    store = await open_alert_store(settings)
    try:
        found: dict[str, int] = {}
        for tenant in tenants:
            offset = 0
            while True:
                page = await store.list(tenant, status=None, limit=500, offset=offset)
                found.update({row.id: row.occurrences for row in page})
                if len(page) < 500:
                    break
                offset += 500
        return found
    finally:
        await store.close()


@pytest.fixture(scope="module")
def expected() -> Expected:
    """The alerts and rejections `replay` finds in the bundled sample."""
    return _replay(_sample())


def test_stream_to_postgres_equals_replay(
    ray_cluster: str, live_redis_url: str, pg_dsn: str, expected: Expected
) -> None:
    """Events XADDed to a stream, routed over 3 shards in small batches, persist the same
    alert ids and occurrences as `replay`; rejects reach the dead-letter stream; all acked."""
    token = secrets.token_hex(5)
    settings = load_settings(
        alerts_dsn=pg_dsn,
        metrics_url=live_redis_url,
        metrics_prefix=f"rwtest-{token}",
        stream_url=live_redis_url,
        stream_key=f"rwtest:{token}:events",
        dead_letter_stream=f"rwtest:{token}:dead",
        consumer_group="e2e",
        consumer_name="c1",
        shards=3,
        flush_events=300,
        linger_ms=5,
        read_count=25,
        block_ms=20,
    )
    lines = _sample()
    stream_lines = lines[:6000] + BAD_LINES + lines[6000:]

    async def scenario() -> tuple[dict[str, int], list[Any], dict[str, Any]]:
        client = aioredis.Redis.from_url(live_redis_url)
        producer = StreamProducer(client, stream=settings.stream_key)
        # Batched entries for most events, one event per entry for a slice in the middle.
        await producer.add_events(stream_lines[:5000], per_entry=50)
        await producer.add_events(stream_lines[5000:7000], per_entry=1)
        await producer.add_events(stream_lines[7000:], per_entry=200)
        pipeline = Pipeline(settings)
        await pipeline.start(migrate=True)
        consumer = StreamConsumer.from_settings(settings)
        await consumer.ensure_group()
        stats = await pump_until_read(pipeline, consumer, len(stream_lines))
        await pipeline.router.finish.remote()
        router_stats = await pipeline.router.stats.remote()
        pipeline.stop()
        await consumer.close()
        dead = await client.xrange(settings.dead_letter_stream)
        metrics = await client.hgetall(f"{settings.metrics_prefix}:m:all")
        keys = [k async for k in client.scan_iter(match=f"rwtest*{token}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        assert stats.rejected == len(BAD_LINES) + expected.rejected
        assert router_stats["accepted"] == len(lines) - expected.rejected
        return (
            await _stored(settings, expected.tenants),
            dead,
            {k.decode(): v.decode() for k, v in metrics.items()},
        )

    stored, dead, metrics = asyncio.run(scenario())
    assert stored == expected.occurrences
    reasons = {fields[b"payload"]: fields[b"reason"].decode() for _, fields in dead}
    assert len(dead) == len(BAD_LINES) + expected.rejected
    assert [reasons[line] for line in BAD_LINES] == [
        "missing_field",
        "malformed_json",
        "bad_timestamp",
    ]
    assert int(metrics["events"]) == len(_sample()) - expected.rejected


def test_file_source_with_embedded_stores_equals_replay(
    ray_cluster: str, tmp_path: Path, expected: Expected
) -> None:
    """The embedded defaults (SQLite alerts, in-memory metrics actor) give replay's alerts."""
    settings = load_settings(
        alerts_dsn=f"sqlite:///{tmp_path / 'alerts.db'}",
        metrics_url="memory://",
        shards=2,
        flush_events=500,
        source="jsonl",
    )
    lines = _sample()

    async def scenario() -> tuple[dict[str, int], dict[str, Any]]:
        pipeline = Pipeline(settings)
        await pipeline.start(migrate=True)
        chunks = [lines[i : i + 700] for i in range(0, len(lines), 700)]
        await pipeline.pump(paced_batches(chunks), bounded=True)
        await asyncio.sleep(0)
        actor = ray.get_actor(METRICS_ACTOR, namespace=settings.ray_namespace)
        snapshot: dict[str, Any] = await actor.snapshot.remote(None)
        pipeline.stop()
        return await _stored(settings, expected.tenants), snapshot

    stored, snapshot = asyncio.run(scenario())
    assert stored == expected.occurrences
    assert snapshot["events"] == len(lines) - expected.rejected
    assert msgspec.json.encode(snapshot)


def test_entries_are_acknowledged_once_persisted_not_at_the_next_read(
    ray_cluster: str, live_redis_url: str, tmp_path: Path
) -> None:
    """With reads that block for 4 s, an entry is acknowledged as soon as its batch is
    persisted (the pump's acknowledger), not when the next read returns."""
    token = secrets.token_hex(5)
    # A drill's stream keys and namespace, with SQLite alerts, no checkpoints and long reads.
    settings = drill_settings(
        live_redis_url,
        f"sqlite:///{tmp_path / 'alerts.db'}",
        token,
        metrics_url="memory://",
        checkpoint_interval_s=0,
        block_ms=4000,
    )
    lines = _sample()[:500]

    async def scenario() -> tuple[float, int]:
        client = aioredis.Redis.from_url(live_redis_url)
        producer = StreamProducer(client, stream=settings.stream_key)
        pipeline = Pipeline(settings)
        await pipeline.start(migrate=True)
        consumer = StreamConsumer.from_settings(settings)
        await consumer.ensure_group()
        stop = asyncio.Event()
        source = StreamBatches(consumer, stop)
        pumping = asyncio.create_task(
            pipeline.pump(
                source.__aiter__(), ack=source.ack, dead_letter=source.dead_letter, stop=stop
            )
        )
        await asyncio.sleep(1.0)  # the pump is now blocked in its first read
        await producer.add_events(lines, per_entry=len(lines))
        written = time.monotonic()
        while (await pipeline.router.stats.remote()).get("events", 0) < len(lines):
            await asyncio.sleep(0.01)
        while (await consumer.lag()).pending:
            await asyncio.sleep(0.01)
        acked_after = time.monotonic() - written
        stop.set()
        stats = await pumping
        pipeline.stop()
        await consumer.close()
        keys = [k async for k in client.scan_iter(match=f"rwdrill:{token}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        return acked_after, stats.acked

    acked_after, acked = asyncio.run(scenario())
    assert acked == 1
    assert acked_after < 2.0, f"acknowledged {acked_after:.2f} s after it was written"


def test_a_buffer_goes_when_its_busy_shard_answers_not_after_linger(
    ray_cluster: str, tmp_path: Path
) -> None:
    """Events buffered while their shard was busy are sent once it answers, not when
    ``linger_ms`` (here 60 s) runs out; with the store idle, an alert write goes with a batch."""
    settings = load_settings(
        alerts_dsn=f"sqlite:///{tmp_path / 'alerts.db'}",
        metrics_url="memory://",
        shards=1,
        flush_events=1_000_000,
        linger_ms=60_000,
        source="jsonl",
    )
    config = SyntheticConfig(events=20_100, tenants=20, principals=500, seed=11)
    lines = list(generate(config))
    busy, buffered = lines[:20_000], lines[20_000:]

    async def scenario() -> tuple[float, dict[str, Any]]:
        pipeline = Pipeline(settings)
        await pipeline.start(migrate=True)
        router = pipeline.router
        first = await router.submit.remote(busy)  # the idle shard gets it at once
        started = time.monotonic()
        second = await router.submit.remote(buffered)  # the shard is busy: buffered
        assert (await router.stats.remote())["buffered"] == len(buffered)
        done: set[int] = set()
        while {first.ticket, second.ticket} - done and time.monotonic() - started < 20:
            finished, failed = await router.wait_completed.remote(0.25)
            assert not failed
            done.update(finished)
        elapsed = time.monotonic() - started
        stats: dict[str, Any] = await router.stats.remote()
        pipeline.stop()
        return elapsed, stats

    elapsed, stats = asyncio.run(scenario())
    assert elapsed < 20, "the buffered batch waited for linger_ms"
    assert stats["early_alert_writes"] >= 1
