"""Faults that are not crashes: a poison entry, and PostgreSQL going away mid-run.

Both run the attack-laden synthetic workload through a Redis Stream into PostgreSQL with a
recoverable pipeline (checkpoints on) and compare the stored alerts with one detector's over
the same events (:mod:`rayworker.chaos`):

* a poison entry (a shard fails every batch holding it) is dead-lettered after
  ``poison_attempts`` failures, with its history, while every other entry flows and is acked;
* a private PostgreSQL is stopped for ~15 s: the router's health reports the alert store
  CRITICAL, nothing is acknowledged beyond the latest checkpoint, and once the server is back
  the pipeline finishes by itself with exactly the expected alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import ray
import redis.asyncio as aioredis

from rayworker.chaos import drill_settings, drill_workload, expected_alerts, stored_alerts
from rayworker.checkpoint import ROUTER_OWNER, stream_position
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.pipeline.app import Pipeline, PumpStats
from rayworker.pipeline.sources import StreamBatches
from rayworker.settings import Settings
from rayworker.sinks.factory import open_alert_store
from tests.integration.private_services import (
    PrivatePostgres,
    private_postgres_fixture,  # noqa: F401 - registers the fixture in this module
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

_MARKER = "rw-poison-7f3a"
_FINISH_TIMEOUT_S = 75.0
"""How long a run may take to acknowledge every entry before the test gives up."""


def _settings(redis_url: str, pg_dsn: str, **extra: Any) -> Settings:
    return drill_settings(redis_url, pg_dsn, secrets.token_hex(5), **extra)


def _tenants(lines: Sequence[bytes]) -> set[str]:
    decoder = msgspec.json.Decoder()
    return {str(decoder.decode(line).get("organizationId")) for line in lines}


def _poisoned(line: bytes) -> bytes:
    """A valid event like ``line`` whose outcome description carries the poison marker."""
    event = msgspec.json.decode(line)
    event["outcomeDescription"] = f"{event.get('outcomeDescription', '')} {_MARKER}"
    return msgspec.json.encode(event)


@dataclass(slots=True)
class _Run:
    """What the driver saw: acks (monotonic time, entry ids), pump statistics, router stats."""

    acks: list[tuple[float, list[str]]] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    """Entries acknowledged above the latest checkpoint the store held at that moment."""
    pump: PumpStats | None = None
    router: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    dead: list[dict[bytes, bytes]] = field(default_factory=list)


class _Acks:
    """Acknowledges like the source, recording each ack and checking it against the store's
    latest checkpoint when the store answers (while it is down the test checks instead that
    acks stay within what the router completed before the outage)."""

    def __init__(self, source: StreamBatches, settings: Settings, run: _Run) -> None:
        self.source = source
        self.settings = settings
        self.run = run

    async def __call__(self, tokens: Sequence[list[str]]) -> None:
        ids = [entry for token in tokens for entry in token]
        self.run.acks.append((time.monotonic(), ids))
        covered: int | None = None
        with contextlib.suppress(Exception):
            covered = await asyncio.wait_for(self._latest(), 2.0)
        if covered is not None:
            self.run.uncovered += [e for e in ids if stream_position(e) > covered]
        await self.source.ack(tokens)

    async def _latest(self) -> int:
        store: Any = await open_alert_store(self.settings)
        try:
            latest = await store.latest_checkpoint(self.settings.ray_namespace, ROUTER_OWNER)
        finally:
            await store.close()
        return latest.position if latest is not None else -1


Produce = Callable[[StreamProducer], Awaitable[None]]
Strike = Callable[[Pipeline], Awaitable[None]]


async def _run(settings: Settings, events: int, produce: Produce, strike: Strike) -> _Run:
    """Run a recoverable pipeline on ``settings.stream_key`` while ``produce`` writes to it
    and ``strike`` does its worst; stop once the router counted ``events`` and nothing is
    pending (or after ``_FINISH_TIMEOUT_S``), settle the shards and read the dead letters."""
    run = _Run()
    client = aioredis.Redis.from_url(settings.stream_url.get_secret_value())
    producer = StreamProducer(client, stream=settings.stream_key)
    pipeline = Pipeline(settings, recoverable=True)
    await pipeline.start(migrate=True)
    consumer = StreamConsumer.from_settings(settings, replays_pending=True)
    await consumer.ensure_group()
    stop = asyncio.Event()
    source = StreamBatches(consumer, stop, poison_attempts=settings.poison_attempts)
    started = time.monotonic()

    async def until_all_acked() -> None:
        while time.monotonic() - started < _FINISH_TIMEOUT_S:
            with contextlib.suppress(ray.exceptions.RayActorError):
                seen = (await pipeline.router.stats.remote()).get("events", 0)
                if seen == events and (await consumer.lag()).pending == 0:
                    run.finished = True
                    return
            await asyncio.sleep(0.1)

    async def drive() -> None:
        try:
            await asyncio.gather(produce(producer), strike(pipeline), until_all_acked())
        finally:
            stop.set()

    try:
        driving = asyncio.create_task(drive())
        run.pump = await pipeline.pump(
            source.__aiter__(),
            ack=_Acks(source, settings, run),
            dead_letter=source.dead_letter,
            stop=stop,
            replay=source.replay,
        )
        await driving
        await pipeline.router.finish.remote()
        run.router = await pipeline.router.stats.remote()
        # redis-py types the reply as a union; without decode_responses it is all bytes.
        records: Any = await client.xrange(settings.dead_letter_stream)
        run.dead = [fields for _, fields in records]
    finally:
        if pipeline.router is not None:
            pipeline.stop()
        await consumer.close()
        await client.delete(settings.stream_key, settings.dead_letter_stream)
        await client.aclose()
    return run


def test_poison_entry_is_dead_lettered_after_its_attempts_while_the_rest_flows(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """An entry whose event makes its shard fail every time goes to the dead-letter stream
    (reason poison, its entry id, its attempts) after poison_attempts failures; every other
    entry is acked and the stored alerts equal one detector's over all other events."""
    settings = _settings(live_redis_url, pg_dsn, fault_poison=_MARKER, poison_attempts=3)
    lines = drill_workload(30_000, seed=5)
    before, after = lines[:15_000], lines[15_000:]
    # A failed login: the brute-force rule counts every one, so it surely reaches a shard
    # (an event no rule counts is accepted but sent to none, and could not poison one).
    poison = _poisoned(next(line for line in after if b'"auth.login.failure"' in line))
    poison_ids: list[str] = []

    async def produce(producer: StreamProducer) -> None:
        await producer.add_events(before, per_entry=100)
        poison_ids.extend(await producer.add_events([poison]))
        await producer.add_events(after, per_entry=100)

    async def nothing(_: Pipeline) -> None:
        return None

    run = asyncio.run(_run(settings, len(lines), produce, nothing))
    stored, rows = asyncio.run(stored_alerts(settings, _tenants(lines)))
    expected = expected_alerts(settings, lines)

    router = {k: run.router.get(k) for k in ("events", "late", "rejected", "errors")}
    print(f"pump: {run.pump}; router: {router}; dead letters: {len(run.dead)}")
    assert run.finished, f"not every entry was acknowledged in {_FINISH_TIMEOUT_S} s"
    assert run.router["events"] == len(lines)
    assert run.uncovered == []
    [entry] = poison_ids
    poisoned = [d for d in run.dead if d[b"reason"] == b"poison"]
    assert len(poisoned) == 1, poisoned
    record = poisoned[0]
    assert record[b"entry"].decode() == entry
    assert record[b"payload"] == poison
    assert b"failed 3 times" in record[b"message"]
    assert run.pump is not None
    assert run.pump.recoveries >= 1 + settings.poison_attempts
    assert stored == expected
    assert rows == len(expected)


@dataclass(slots=True)
class _Outage:
    """What the test saw while PostgreSQL was down."""

    stopped_at: float = 0.0
    started_at: float = 0.0
    completed_at_stop: int = -1
    completed_at_start: int = -1
    health: list[tuple[float, str, str]] = field(default_factory=list)
    """(seconds since the stop, alert-store status, its message) of each poll."""


def test_postgres_outage_back_pressures_reports_critical_and_recovers_by_itself(
    ray_cluster: str, live_redis_url: str, private_postgres: PrivatePostgres
) -> None:
    """PostgreSQL stopped for ~15 s mid-run: health reports the alert store CRITICAL while it
    is down, nothing is acked beyond the latest checkpoint, and once it is back the pipeline
    finishes by itself with exactly one detector's alerts and no duplicate rows."""
    settings = _settings(live_redis_url, private_postgres.dsn)
    lines = drill_workload(60_000, seed=7)
    outage = _Outage()
    rate, per_entry = 3_000.0, 100

    async def produce(producer: StreamProducer) -> None:
        begun = time.monotonic()
        chunk = per_entry * 20
        for at in range(0, len(lines), chunk):
            await producer.add_events(lines[at : at + chunk], per_entry=per_entry)
            ahead = (at + chunk) / rate - (time.monotonic() - begun)
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def completed_position(pipeline: Pipeline) -> int:
        stats = await pipeline.router.stats.remote()
        return int(stats["completed_position"])

    async def strike(pipeline: Pipeline) -> None:
        # Some checkpoints completed and some events in: the outage strikes mid-stream.
        while True:
            stats = await pipeline.router.stats.remote()
            if stats["completed_barrier"] > 0 and stats.get("events", 0) >= 12_000:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(private_postgres.stop)
        outage.stopped_at = time.monotonic()
        # A save already in flight may still complete while the server shuts down.
        await asyncio.sleep(0.5)
        outage.completed_at_stop = await completed_position(pipeline)
        while time.monotonic() - outage.stopped_at < 15.0:
            health = await pipeline.router.health.remote()
            store = health["shards"]["alert-store"]
            outage.health.append(
                (time.monotonic() - outage.stopped_at, store["status"], store["message"])
            )
            await asyncio.sleep(0.25)
        outage.completed_at_start = await completed_position(pipeline)
        outage.started_at = time.monotonic()
        await asyncio.to_thread(private_postgres.start)

    run = asyncio.run(_run(settings, len(lines), produce, strike))
    stored, rows = asyncio.run(stored_alerts(settings, _tenants(lines)))
    expected = expected_alerts(settings, lines)

    statuses = [status for _, status, _ in outage.health]
    print(f"alert-store status while down: {statuses}")
    assert "CRITICAL" in statuses, outage.health
    first = statuses.index("CRITICAL")
    assert outage.health[first][0] <= 10.0, outage.health
    # Once open, the breaker stays open until the store answers again.
    assert set(statuses[first:]) == {"CRITICAL"}, outage.health
    assert "unavailable" in outage.health[-1][2]
    # No checkpoint completes without its database, so nothing more may be acknowledged.
    assert outage.completed_at_start == outage.completed_at_stop
    during = [e for at, ids in run.acks if outage.stopped_at <= at < outage.started_at for e in ids]
    assert [e for e in during if stream_position(e) > outage.completed_at_start] == []
    after = [e for at, ids in run.acks if at >= outage.started_at for e in ids]
    print(f"entries acked during the outage: {len(during)}, after it: {len(after)}")
    assert after, "nothing was acknowledged once PostgreSQL was back"
    assert run.uncovered == []
    assert run.finished, f"not every entry was acknowledged in {_FINISH_TIMEOUT_S} s"
    assert run.router["events"] == len(lines)
    assert stored == expected
    assert rows == len(expected)
