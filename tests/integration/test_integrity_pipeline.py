"""Event integrity on real services: signed events through a Redis Stream, the router's
screening and shard detectors, alerts in PostgreSQL, metrics in Redis, dead letters in Redis.

The router half (:class:`~rayworker.partition.Partitioner`) and the shard detectors run in this
process, exactly as the router and shard actors call them; the stores and streams are real.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from rayworker.alerts import AlertBook
from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig, MetricDeltas
from rayworker.health import render_prometheus
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.integrity import INTEGRITY_RULE_ID, event_hash, sign
from rayworker.partition import Partitioner
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack
from rayworker.settings import load_settings
from rayworker.sinks.factory import open_alert_store
from rayworker.sinks.redis_metrics import RedisMetricsStore

pytestmark = pytest.mark.integration

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
KEYS = {"acme": "acme-producer-secret", "hooli": "hooli-producer-secret"}


def _event(n: int, tenant: str, seconds: float, **fields: Any) -> dict[str, Any]:
    stamp = (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return {
        "id": f"{tenant}-{n}",
        "timestamp": stamp,
        "action": "data.read",
        "status": "success",
        "principalId": f"u-{n % 7}",
        "organizationId": tenant,
        "targetResourceType": "Document",
        "targetResourceId": f"d-{n}",
        "outcomeDescription": "Document read",
        **fields,
    }


def _signed(event: dict[str, Any], key: str) -> dict[str, Any]:
    digest = event_hash(event)
    return {**event, "hash": digest, "signature": sign(digest, key), "algorithm": "HMAC-SHA256"}


def _traffic() -> tuple[list[bytes], dict[str, list[str]]]:
    """Signed traffic of two tenants with forgeries; returns lines and the forged ids."""
    events: list[dict[str, Any]] = []
    forged: dict[str, list[str]] = {"acme": [], "hooli": []}
    for n in range(60):
        event = _signed(_event(n, "acme", seconds=n), KEYS["acme"])
        if n == 11:
            event["targetResourceId"] = "d-other"  # a changed field
            forged["acme"].append(event["id"])
        if n == 23:
            event["timestamp"] = event["timestamp"].replace("Z", ".000Z")  # same instant
            forged["acme"].append(event["id"])
        events.append(event)
    # Six failed logins whose status was forged after signing: tampered, and still detected.
    for n in range(60, 66):
        event = _signed(
            _event(n, "acme", seconds=n, action="auth.login.failure", principalId="victim"),
            KEYS["acme"],
        )
        event["status"] = "failure"
        forged["acme"].append(event["id"])
        events.append(event)
    events.extend(_signed(_event(n, "hooli", seconds=n), KEYS["hooli"]) for n in range(20))
    events.append(_event(20, "hooli", seconds=20))  # unsigned: hooli requires signatures
    events.append(_event(21, "hooli", seconds=21))
    events.append(_signed(_event(22, "hooli", seconds=22), KEYS["acme"]))  # another's key
    forged["hooli"].append("hooli-22")
    events.append(_event(0, "initech", seconds=5))  # no policy: never checked
    lines = [json.dumps(e, separators=(",", ":")).encode() for e in events]
    return lines, forged


def _settings(pg_dsn: str, redis_url: str, token: str) -> Any:
    return load_settings(
        alerts_dsn=pg_dsn,
        metrics_url=redis_url,
        metrics_prefix=f"rwtest-{token}",
        integrity={
            "policy": "off",
            "tenants": {"acme": "verify-if-present", "hooli": "require"},
            "keys": KEYS,
        },
    )


def _replay(lines: list[bytes], integrity: Any) -> AlertBook:
    detector = Detector(builtin_pack(), clock=CLOCK, integrity=integrity)
    book = AlertBook()
    for start in range(0, len(lines), 10):
        book.update(detector.process_lines(lines[start : start + 10]).alerts)
    book.update(detector.flush().alerts)
    return book


async def _run(
    settings: Any, redis_url: str, token: str, lines: list[bytes]
) -> tuple[list[dict[str, bytes]], MetricDeltas]:
    """Stream -> router screening -> shards -> PostgreSQL and Redis; returns dead letters."""
    client = aioredis.Redis.from_url(redis_url)
    stream, dead = f"rwtest:{token}:events", f"rwtest:{token}:dead"
    store = await open_alert_store(settings, migrate=True)
    metrics = RedisMetricsStore(settings.metrics_url, prefix=settings.metrics_prefix)
    pack = builtin_pack()
    integrity = settings.integrity.config()
    router = Partitioner(pack, Assignment.balanced(3), DetectorConfig(), CLOCK, integrity=integrity)
    shards = [
        Detector(pack, config=DetectorConfig(max_future_s=None), clock=CLOCK) for _ in range(3)
    ]
    total = MetricDeltas()
    try:
        await StreamProducer(client, stream=stream).add_events(lines, per_entry=10)
        consumer = StreamConsumer(
            client, stream=stream, group="g", consumer="c1", count=3, dead_letter_stream=dead
        )
        await consumer.ensure_group()
        while entries := await consumer.read():
            part = router.split_lines([line for entry in entries for line in entry.lines])
            alerts = list(part.alerts)
            deltas = part.metrics
            for shard, sub in part.shards.items():
                result = shards[shard].process_routed(
                    sub.lines(), sub.wm_after, sub.owned, sub.watermarks
                )
                alerts += result.alerts
                deltas.merge(result.metrics)
            await store.upsert(alerts)
            await metrics.record(deltas, at=CLOCK.now())
            await consumer.dead_letter(part.rejections)
            await consumer.ack([entry.entry_id for entry in entries])
            total.merge(deltas)
        final: list[Any] = []
        for shard_detector in shards:
            flushed = shard_detector.flush()
            final += flushed.alerts
            total.merge(flushed.metrics)
        await store.upsert(final)
        records = await client.xrange(dead)
        return [fields for _, fields in records], total
    finally:
        await store.close()
        await metrics.close()
        await client.delete(stream, dead)  # the metrics stay for the test to read back
        await client.aclose()


def test_signed_stream_to_postgres_and_redis(live_redis_url: str, pg_dsn: str) -> None:
    """Forgeries become one CRITICAL alert per tenant in PostgreSQL with their ids as evidence,
    counted in Redis and Prometheus; unsigned events of a ``require`` tenant are dead-lettered
    with their reason; the tampered failed logins still alert; the store equals replay."""
    token = secrets.token_hex(5)
    settings = _settings(pg_dsn, live_redis_url, token)
    lines, forged = _traffic()
    dead, total = asyncio.run(_run(settings, live_redis_url, token, lines))

    assert [(d[b"reason"], d[b"tenant"]) for d in dead] == [(b"unsigned", b"hooli")] * 2
    assert json.loads(dead[0][b"payload"])["id"] == "hooli-20"
    assert total.integrity_violations == {"acme": len(forged["acme"]), "hooli": 1}

    async def read_back() -> tuple[dict[str, Any], dict[str, Any], str]:
        store = await open_alert_store(settings)
        metrics = RedisMetricsStore(settings.metrics_url, prefix=settings.metrics_prefix)
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            rows = {t: await store.list(t, limit=500) for t in ("acme", "hooli", "initech")}
            snaps = {t: await metrics.snapshot(t) for t in (None, "acme", "hooli")}
            text = render_prometheus(None, snaps)
            return rows, snaps, text
        finally:
            await store.close()
            await metrics.close()
            keys = [k async for k in client.scan_iter(match=f"rwtest-{token}*", count=500)]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    rows, snaps, text = asyncio.run(read_back())
    for tenant in ("acme", "hooli"):
        [alert] = [a for a in rows[tenant] if a.rule_id == INTEGRITY_RULE_ID]
        assert alert.severity == "CRITICAL"
        assert sorted(alert.evidence) == sorted(forged[tenant])
        assert alert.occurrences == len(forged[tenant])
    assert "failed_auth" in {a.rule_id for a in rows["acme"]}
    assert not rows["initech"]
    assert snaps["acme"].integrity_violations == len(forged["acme"])
    assert snaps[None].integrity_violations == len(forged["acme"]) + 1
    assert snaps["hooli"].rejected_by_reason == {"unsigned": 2}
    assert f'rayworker_integrity_violations_total{{tenant="acme"}} {len(forged["acme"])}' in text

    expected = _replay(lines, settings.integrity.config())
    stored = {a.id: (a.occurrences, sorted(a.evidence)) for rows_ in rows.values() for a in rows_}
    assert stored == {a.id: (a.occurrences, sorted(a.evidence_ids)) for a in expected}
