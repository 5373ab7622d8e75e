"""Event integrity through the Ray pipeline: violations alert once, unsigned events dead-letter."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
import redis.asyncio as aioredis

from rayworker.alerts import AlertBook
from rayworker.detect import Detector
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.integrity import INTEGRITY_RULE_ID
from rayworker.pipeline.app import Pipeline
from rayworker.rules import builtin_pack
from rayworker.settings import load_settings
from rayworker.sinks.factory import open_alert_store
from tests.integration.conftest import pump_until_read
from tests.integration.test_integrity_pipeline import KEYS, _traffic

pytestmark = pytest.mark.integration


def test_ray_pipeline_raises_integrity_alerts_once(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """Over 3 shards: one integrity alert per tenant with every forged id, counted once;
    unsigned events of a `require` tenant in the dead-letter stream; the same as replay."""
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
        flush_events=20,
        linger_ms=5,
        read_count=5,
        block_ms=20,
        max_future_s=None,
        integrity={
            "tenants": {"acme": "verify-if-present", "hooli": "require"},
            "keys": KEYS,
        },
    )
    lines, forged = _traffic()

    async def scenario() -> tuple[list[Any], dict[str, Any], dict[str, list[Any]]]:
        client = aioredis.Redis.from_url(live_redis_url)
        await StreamProducer(client, stream=settings.stream_key).add_events(lines, per_entry=7)
        pipeline = Pipeline(settings)
        await pipeline.start(migrate=True)
        consumer = StreamConsumer.from_settings(settings)
        await consumer.ensure_group()
        await pump_until_read(pipeline, consumer, len(lines))
        await pipeline.router.finish.remote()
        pipeline.stop()
        await consumer.close()
        dead = await client.xrange(settings.dead_letter_stream)
        metrics = await client.hgetall(f"{settings.metrics_prefix}:m:all")
        keys = [k async for k in client.scan_iter(match=f"rwtest*{token}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        store = await open_alert_store(settings)
        try:
            rows = {t: await store.list(t, limit=500) for t in ("acme", "hooli", "initech")}
        finally:
            await store.close()
        return dead, {k.decode(): v.decode() for k, v in metrics.items()}, rows

    dead, metrics, rows = asyncio.run(scenario())
    assert sorted(f[b"reason"] for _, f in dead) == [b"unsigned", b"unsigned"]
    assert int(metrics["integrity_violations"]) == len(forged["acme"]) + 1
    for tenant in ("acme", "hooli"):
        [alert] = [a for a in rows[tenant] if a.rule_id == INTEGRITY_RULE_ID]
        assert alert.severity == "CRITICAL"
        assert sorted(alert.evidence) == sorted(forged[tenant])
    detector = Detector(builtin_pack(), integrity=settings.integrity.config())
    book = AlertBook()
    book.update(detector.process_lines(lines).alerts)
    book.update(detector.flush().alerts)
    stored = {a.id: a.occurrences for rows_ in rows.values() for a in rows_}
    assert stored == {a.id: a.occurrences for a in book}
