"""The stream consumer across Redis outages and restarts; its pending replay and delivery counts.

Restarts use a private Redis (tests/integration/private_services.py), never the shared one;
the read_pending and deliveries tests use the shared Redis with keys of their own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from rayworker.ingest.redis_streams import StreamConsumer, StreamEntry, StreamProducer
from tests.integration.private_services import (  # noqa: F401 - registers the fixture
    PrivateRedis,
    private_redis_fixture,
)

pytestmark = pytest.mark.integration

GROUP = "rwtest-group"


def events(n: int, start: int = 0) -> list[bytes]:
    return [
        b'{"organizationId":"org-1","timestamp":"2026-01-05T09:30:00Z","action":"data.read",'
        b'"status":"success","n":%d}' % i
        for i in range(start, start + n)
    ]


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=1)
    try:
        yield client
    finally:
        await client.aclose()


def consumer(
    client: aioredis.Redis, stream: str, name: str = "c1", **options: int
) -> StreamConsumer:
    options.setdefault("block_ms", 0)
    return StreamConsumer(
        client,
        stream=stream,
        group=GROUP,
        consumer=name,
        dead_letter_stream=f"{stream}:dead",
        retry_initial_s=0.02,
        retry_max_s=0.2,
        **options,
    )


async def read_until(c: StreamConsumer, n: int, *, within_s: float = 20.0) -> list[StreamEntry]:
    """Read until ``n`` entries came (reads may return [] meanwhile), or fail after a while."""
    got: list[StreamEntry] = []
    deadline = time.monotonic() + within_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} entries in {within_s} s"
        got.extend(await c.read())
    return got


@pytest.fixture
def stream(live_redis_url: str) -> Iterator[tuple[str, str]]:
    """A unique stream key on the shared Redis (URL, key), deleted afterwards."""
    key = f"rwtest:{secrets.token_hex(6)}"
    yield live_redis_url, key

    async def cleanup() -> None:
        async with opened(live_redis_url) as client:
            await client.delete(key, f"{key}:dead")

    asyncio.run(cleanup())


def test_consumer_recovers_from_a_redis_restart(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Reads return [] while Redis is down, acks wait; after the restart the group is recreated,
    the loss (unacked entries, and an ack that found its entry gone) is counted and logged,
    new entries are read and old acks do not raise."""

    async def main() -> None:
        async with opened(private_redis.url) as client:
            producer = StreamProducer(client, stream="in")
            c = consumer(client, "in", count=10)
            await c.ensure_group()
            before = await producer.add_events(events(5))
            assert [e.entry_id for e in await read_until(c, 5)] == before
            assert await c.ack(before[:2]) == 2
            assert c.health().in_flight == 3

            private_redis.stop()
            started = time.monotonic()
            assert await c.read() == []
            assert await c.read() == []
            down = c.health()
            assert not down.connected
            assert down.down_since is not None
            assert down.down_since >= started
            assert down.last_error is not None
            assert down.last_error.startswith("XREADGROUP")
            assert str(private_redis.port) not in down.last_error
            # An ack waits for Redis rather than failing or being dropped.
            waiting_ack = asyncio.create_task(c.ack(before[2:3]))
            await asyncio.sleep(0.3)
            assert not waiting_ack.done()

            private_redis.start()
            # The group (and the pre-restart entries) are gone: the ack finds nothing pending,
            # which is counted (the entry was done, but unprotected since the restart).
            assert await asyncio.wait_for(waiting_ack, timeout=30) == 0
            assert c.health().acks_missed == 1
            after = await StreamProducer(client, stream="in").add_events(events(3, start=5))
            got = await read_until(c, 3)
            assert [e.entry_id for e in got] == after
            health = c.health()
            assert health.connected
            assert health.down_since is None
            assert (health.resets, health.lost_pending, health.in_flight) == (1, 2, 3)
            assert health.reset_at is not None
            assert health.reset_at > started
            assert health.last_error is not None
            assert "NOGROUP" in health.last_error
            # Acks of entries from before the reset neither raise nor count.
            assert await c.ack(before) == 0
            assert await c.ack(after) == 3
            assert c.health().in_flight == 0
            assert (await c.lag()).pending == 0

    # A pipeline started earlier in the session stops rayworker's records at the "rayworker"
    # logger (they go to stderr), so listen on the consumer's logger itself.
    ingest = logging.getLogger("rayworker.ingest")
    # Only then: otherwise every record would reach caplog twice.
    listen = not logging.getLogger("rayworker").propagate
    if listen:
        ingest.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="rayworker.ingest"):
            asyncio.run(main())
    finally:
        ingest.removeHandler(caplog.handler)
    # Count each record once, however many of caplog's handlers it reached.
    records = list({id(r): r for r in caplog.records}.values())
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("unreachable" in m for m in warnings)
    lost = [m for m in warnings if "is gone" in m]
    assert len(lost) == 1
    assert "2 entries this consumer had read and not acked" in lost[0]
    missed = [m for m in warnings if "no longer pending in group" in m]
    assert len(missed) == 1
    assert missed[0].startswith("1 entries acked on Redis stream")
    assert any("answers again" in r.getMessage() for r in records)


def test_a_blocked_read_returns_empty_when_redis_stops(private_redis: PrivateRedis) -> None:
    """A read blocked in XREADGROUP when the server goes away returns [] instead of raising."""

    async def main() -> None:
        async with opened(private_redis.url) as client:
            c = consumer(client, "in", block_ms=5_000)
            await c.ensure_group()
            reading = asyncio.create_task(c.read())
            await asyncio.sleep(0.2)
            private_redis.stop()
            assert await asyncio.wait_for(reading, timeout=30) == []
            assert not c.health().connected
            private_redis.start()
            await StreamProducer(client, stream="in").add_events(events(1))
            assert len(await read_until(c, 1)) == 1
            assert c.health().resets == 1
            assert c.health().lost_pending == 0

    asyncio.run(main())


def test_group_created_on_first_read_is_not_a_reset(stream: tuple[str, str]) -> None:
    """Reading before ensure_group() creates the group quietly: nothing was lost."""
    url, key = stream

    async def main() -> None:
        async with opened(url) as client:
            await StreamProducer(client, stream=key).add_events(events(2))
            c = consumer(client, key)
            assert len(await read_until(c, 2)) == 2
            assert (c.health().resets, c.health().lost_pending) == (0, 0)
            assert c.health().reset_at is None

    asyncio.run(main())


def test_read_pending_returns_own_unacked_entries_in_order(stream: tuple[str, str]) -> None:
    """read_pending() gives this consumer's unacked entries above `after`, in id order, and
    ends read()'s own drain so a restarted consumer does not get them twice."""
    url, key = stream

    async def main() -> None:
        async with opened(url) as client:
            producer = StreamProducer(client, stream=key)
            c1 = consumer(client, key, count=3)
            await c1.ensure_group()
            ids = await producer.add_events(events(6))
            assert [e.entry_id for e in await read_until(c1, 6)] == ids
            await c1.ack([ids[1], ids[4]])
            # Another consumer's pending entries are not ours to replay.
            other = await producer.add_events(events(2, start=6))
            c2 = consumer(client, key, "c2")
            assert [e.entry_id for e in await read_until(c2, 2)] == other

            mine = [ids[0], ids[2], ids[3], ids[5]]
            assert [e.entry_id for e in await c1.read_pending()] == mine
            assert [e.entry_id for e in await c1.read_pending(after=ids[2])] == mine[2:]
            assert [e.entry_id for e in await c1.read_pending(count=2)] == mine[:2]
            assert [e.entry_id for e in await c1.read_pending(after=ids[5])] == []
            got = await c1.read_pending(count=1)
            assert got[0].lines == events(1)

            # "Crash" and restart under the same name: replay, then only new entries.
            restarted = consumer(client, key, count=3)
            assert [e.entry_id for e in await restarted.read_pending()] == mine
            assert restarted.health().in_flight == 4
            later = await producer.add_events(events(1, start=8))
            assert [e.entry_id for e in await read_until(restarted, 1)] == later
            assert await restarted.read() == []
            with pytest.raises(ValueError, match="count"):
                await restarted.read_pending(count=0)

    asyncio.run(main())


def test_deliveries_count_each_redelivery(stream: tuple[str, str]) -> None:
    """deliveries() reports XPENDING's delivery count per pending id; others are left out."""
    url, key = stream

    async def main() -> None:
        async with opened(url) as client:
            c = consumer(client, key)
            await c.ensure_group()
            ids = await StreamProducer(client, stream=key).add_events(events(3))
            await read_until(c, 3)
            assert await c.deliveries(ids) == dict.fromkeys(ids, 1)
            await c.read_pending()
            await c.read_pending(after=ids[0])
            assert await c.deliveries(ids) == {ids[0]: 2, ids[1]: 3, ids[2]: 3}
            await c.ack([ids[1]])
            assert await c.deliveries([*ids, "1-1"]) == {ids[0]: 2, ids[2]: 3}
            assert await c.deliveries([]) == {}
            with pytest.raises(TypeError, match="sequence"):
                await c.deliveries(ids[0])

    asyncio.run(main())


def test_claim_all_takes_over_other_consumers_pending(stream: tuple[str, str]) -> None:
    """claim_all() moves every entry pending elsewhere to this consumer without counting a
    delivery; read_pending() then replays the whole pending list in id order."""
    url, key = stream

    async def main() -> None:
        async with opened(url) as client:
            producer = StreamProducer(client, stream=key)
            dead = consumer(client, key, "dead", count=2)
            await dead.ensure_group()
            theirs = await producer.add_events(events(3))
            await read_until(dead, 3)
            survivor = consumer(client, key, "survivor")
            mine = await producer.add_events(events(2, start=3))
            await read_until(survivor, 2)
            await client.xdel(key, theirs[1])  # deleted while pending: nothing to replay

            assert await survivor.claim_all() in {2, 3}  # Redis 7 drops the deleted one
            detail = await client.xpending_range(key, GROUP, "-", "+", 10)
            assert {d["consumer"] for d in detail} == {b"survivor"}
            replay = await survivor.read_pending()
            assert [e.entry_id for e in replay] == [theirs[0], theirs[2], *mine]
            assert await survivor.deliveries([theirs[0], *mine]) == {
                theirs[0]: 2,
                mine[0]: 2,
                mine[1]: 2,
            }
            assert await survivor.claim_all() == 0

    asyncio.run(main())
