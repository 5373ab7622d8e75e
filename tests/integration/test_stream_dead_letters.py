"""A Redis Stream pipeline's dead letters name their own event: reason, bytes and entry."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.pipeline.app import Pipeline
from rayworker.settings import load_settings
from rayworker.sources.synthetic import SyntheticConfig, generate
from tests.integration.conftest import pump_until_read

pytestmark = pytest.mark.integration


def test_late_and_rejected_events_in_one_entry_are_dead_lettered_with_their_own_bytes(
    ray_cluster: str, live_redis_url: str, tmp_path: Path
) -> None:
    """An entry holding good, malformed, late and tenantless events in that order: the
    dead-letter stream gets one record for each bad event, with its reason, its exact bytes
    and the id of the entry it came in (a late event after a rejected line once carried the
    rejected line's bytes instead)."""
    token = secrets.token_hex(5)
    settings = load_settings(
        alerts_dsn=f"sqlite:///{tmp_path / 'alerts.db'}",
        metrics_url="memory://",
        stream_url=live_redis_url,
        stream_key=f"rwtest:{token}:events",
        dead_letter_stream=f"rwtest:{token}:dead",
        consumer_group="dl",
        consumer_name="c1",
        shards=2,
        read_count=10,
        block_ms=20,
    )
    good = list(generate(SyntheticConfig(events=1000, tenants=3, principals=50, seed=8)))
    tenant = json.loads(good[-1])["organizationId"]
    malformed = b'{"timestamp": "2026-01-05T09:30:00Z", "action": "auth.login"'
    late = json.dumps(
        {
            "timestamp": "2000-01-01T00:00:00Z",
            "action": "auth.login",
            "status": "failure",
            "organizationId": tenant,
            "principalId": "late-one",
        },
        separators=(",", ":"),
    ).encode()
    tenantless = b'{"timestamp":"2026-01-05T09:30:00Z","action":"a","status":"success"}'
    mixed = [good[-1], malformed, late, tenantless]
    total = len(good) + len(mixed) - 1

    async def scenario() -> tuple[str, dict[bytes, dict[bytes, bytes]]]:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            producer = StreamProducer(client, stream=settings.stream_key)
            await producer.add_events(good[:-1], per_entry=100)
            [entry] = await producer.add_events(mixed, per_entry=len(mixed))
            pipeline = Pipeline(settings)
            await pipeline.start(migrate=True)
            consumer = StreamConsumer.from_settings(settings)
            try:
                await consumer.ensure_group()
                await pump_until_read(pipeline, consumer, total)
            finally:
                pipeline.stop()
                await consumer.close()
            records = await client.xrange(settings.dead_letter_stream)
            return entry, {fields[b"payload"]: fields for _, fields in records}
        finally:
            await client.delete(settings.stream_key, settings.dead_letter_stream)
            await client.aclose()

    entry, dead = asyncio.run(scenario())
    assert set(dead) == {malformed, late, tenantless}
    assert dead[malformed][b"reason"] == b"malformed_json"
    assert dead[late][b"reason"] == b"late"
    assert dead[late][b"tenant"] == tenant.encode()
    assert dead[tenantless][b"reason"] == b"missing_field"
    assert {fields[b"entry"].decode() for fields in dead.values()} == {entry}
