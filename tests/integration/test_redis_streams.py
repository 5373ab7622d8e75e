"""The Redis Streams ingest adapter against a real Redis: delivery, claims, dead letters, lag."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import msgspec
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from rayworker.errors import ConfigError
from rayworker.events import Rejection, RejectReason
from rayworker.ingest import (
    BAD_ENTRY,
    IngestError,
    StreamConsumer,
    StreamEntry,
    StreamLag,
    StreamProducer,
)
from rayworker.settings import Settings

pytestmark = pytest.mark.integration

GROUP = "rwtest-group"


@dataclass(frozen=True)
class Keys:
    """One test's Redis URL and its own stream and dead-letter keys."""

    url: str
    stream: str
    dead: str


@pytest.fixture
def keys(live_redis_url: str) -> Iterator[Keys]:
    """Unique keys for one test, deleted afterwards."""
    token = secrets.token_hex(6)
    k = Keys(live_redis_url, f"rwtest:{token}", f"rwtest:{token}:dead")
    yield k

    async def cleanup() -> None:
        client = aioredis.Redis.from_url(k.url)
        try:
            await client.delete(k.stream, k.dead)
        finally:
            await client.aclose()

    asyncio.run(cleanup())


Scenario = Callable[[aioredis.Redis], Awaitable[None]]


def run(keys: Keys, scenario: Scenario) -> None:
    """Run an async scenario with a client that is closed however it ends."""

    async def main() -> None:
        client = aioredis.Redis.from_url(keys.url, decode_responses=False)
        try:
            await scenario(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def consumer(
    client: aioredis.Redis, keys: Keys, name: str = "c1", **options: int
) -> StreamConsumer:
    options.setdefault("block_ms", 0)
    return StreamConsumer(
        client,
        stream=keys.stream,
        group=GROUP,
        consumer=name,
        dead_letter_stream=keys.dead,
        **options,
    )


def events(n: int, start: int = 0) -> list[bytes]:
    return [
        b'{"organizationId":"org-1","timestamp":"2026-01-05T09:30:00Z","action":"data.read",'
        b'"status":"success","n":%d}' % i
        for i in range(start, start + n)
    ]


async def read_all(c: StreamConsumer, *, rounds: int = 50) -> list[StreamEntry]:
    """Read until a read returns nothing (reads never block in these tests)."""
    out: list[StreamEntry] = []
    for _ in range(rounds):
        got = await c.read()
        if not got:
            break
        out.extend(got)
    return out


def test_single_and_batched_entries_round_trip_in_order(keys: Keys) -> None:
    """One-event and JSONL-batch entries come back as the same lines, in order, with their ids."""
    lines = events(10)

    async def scenario(client: aioredis.Redis) -> None:
        producer = StreamProducer(client, stream=keys.stream)
        c = consumer(client, keys)
        await c.ensure_group()
        single = await producer.add_events(lines[:3])
        batched = await producer.add_events(lines[3:], per_entry=3)
        got = await read_all(c)
        assert [e.entry_id for e in got] == single + batched
        assert [len(e.lines) for e in got] == [1, 1, 1, 3, 3, 1]
        assert [line for e in got for line in e.lines] == lines

    run(keys, scenario)


def test_ack_removes_entries_from_pending(keys: Keys) -> None:
    """Acked entries leave the group's pending list and ack() counts them."""

    async def scenario(client: aioredis.Redis) -> None:
        c = consumer(client, keys)
        await c.ensure_group()
        await StreamProducer(client, stream=keys.stream).add_events(events(5))
        got = await read_all(c)
        assert (await c.lag()).pending == 5
        assert await c.ack([e.entry_id for e in got[:2]]) == 2
        assert (await c.lag()).pending == 3
        assert await c.ack([e.entry_id for e in got]) == 3
        assert await c.ack([]) == 0
        assert (await client.xpending(keys.stream, GROUP))["pending"] == 0

    run(keys, scenario)


def test_restarted_consumer_gets_its_unacked_entries_again(keys: Keys) -> None:
    """A consumer restarted under its old name re-reads its unacked entries first, then new ones."""

    async def scenario(client: aioredis.Redis) -> None:
        producer = StreamProducer(client, stream=keys.stream)
        first = consumer(client, keys, count=2)
        await first.ensure_group()
        ids = await producer.add_events(events(5))
        got = await read_all(first)
        assert [e.entry_id for e in got] == ids
        await first.ack(ids[:2])
        # "Crash": drop the consumer without acking, start a new one under the same name.
        later = await producer.add_events(events(1, start=5))
        restarted = consumer(client, keys, count=2)
        again = await read_all(restarted)
        assert [e.entry_id for e in again] == ids[2:] + later
        assert await read_all(restarted) == []

    run(keys, scenario)


def test_second_consumer_claims_a_dead_consumers_entries(keys: Keys) -> None:
    """After claim_idle_ms, another consumer XAUTOCLAIMs entries a dead consumer left pending."""

    async def scenario(client: aioredis.Redis) -> None:
        producer = StreamProducer(client, stream=keys.stream)
        dead = consumer(client, keys, "dead", claim_idle_ms=50)
        await dead.ensure_group()
        ids = await producer.add_events(events(4))
        assert [e.entry_id for e in await read_all(dead)] == ids
        # A deleted pending entry must be dropped from the claim cleanly.
        await client.xdel(keys.stream, ids[0])
        await asyncio.sleep(0.15)
        alive = consumer(client, keys, "alive", claim_idle_ms=50)
        claimed = await alive.read()
        assert [e.entry_id for e in claimed] == ids[1:]
        detail = await client.xpending_range(keys.stream, GROUP, "-", "+", 10)
        assert {d["consumer"] for d in detail} == {b"alive"}
        assert await alive.ack([e.entry_id for e in claimed]) == 3
        assert (await alive.lag()).pending == 0

    run(keys, scenario)


def test_malformed_entries_are_dead_lettered_and_acked(keys: Keys) -> None:
    """Entries without exactly one usable event field go to the dead letters and are acked."""

    async def scenario(client: aioredis.Redis) -> None:
        producer = StreamProducer(client, stream=keys.stream)
        c = consumer(client, keys)
        await c.ensure_group()
        bad = [
            await producer.add_raw({"foo": b"bar\xff"}),
            await producer.add_raw({"event": b"{}", "events": b"{}"}),
            await producer.add_raw({"event": b""}),
            await producer.add_raw({"events": b"\n\n"}),
        ]
        (good,) = await producer.add_events(events(1))
        got = await read_all(c)
        assert [e.entry_id for e in got] == [good]
        records = await client.xrange(keys.dead)
        assert [f[b"entry"].decode() for _, f in records] == bad
        assert {f[b"reason"] for _, f in records} == {BAD_ENTRY.encode()}
        assert msgspec.json.decode(records[0][1][b"payload"]) == {"foo": "bar\\xff"}
        assert b"neither" in records[0][1][b"message"]
        assert (await c.lag()).pending == 1

    run(keys, scenario)


def test_dead_letter_stores_rejections_verbatim(keys: Keys) -> None:
    """dead_letter() keeps reason, field, message, tenant, source entry and the raw bytes as is."""
    raw = b'{"organizationId":"org-\x00","q":"\\"quoted\\" \'x\'"\xff\xfe\n'
    rejections = [
        Rejection(RejectReason.MALFORMED_JSON, None, "not JSON: bad byte", raw, 0, None),
        Rejection(
            RejectReason.WRONG_TYPE, "organizationId", "must be a string", b"{}", 1, "t-\u00fc"
        ),
    ]

    async def scenario(client: aioredis.Redis) -> None:
        c = consumer(client, keys)
        await c.dead_letter(rejections, source_entries=["1-0", None])
        await c.dead_letter([])
        records = [f for _, f in await client.xrange(keys.dead)]
        assert records[0][b"payload"] == raw
        assert records[0][b"reason"] == b"malformed_json"
        assert records[0][b"field"] == b""
        assert records[0][b"tenant"] == b""
        assert records[0][b"entry"] == b"1-0"
        assert records[1][b"field"] == b"organizationId"
        assert records[1][b"message"] == b"must be a string"
        assert records[1][b"tenant"].decode() == "t-\u00fc"
        assert records[1][b"entry"] == b""
        assert records[1][b"at"].endswith(b"+00:00")
        with pytest.raises(ValueError, match="source_entries"):
            await c.dead_letter(rejections, source_entries=["1-0"])

    run(keys, scenario)


def test_lag_counts_pending_and_undelivered(keys: Keys) -> None:
    """lag() reports delivered-unacked and never-delivered entries of the group."""

    async def scenario(client: aioredis.Redis) -> None:
        c = consumer(client, keys, count=4)
        assert await c.lag() == StreamLag(pending=0, undelivered=0)  # no stream yet
        await StreamProducer(client, stream=keys.stream).add_events(events(10))
        assert await c.lag() == StreamLag(pending=0, undelivered=10)  # no group yet
        await c.ensure_group()
        await c.ensure_group()  # BUSYGROUP is fine
        await c.read()  # drains (nothing of its own)
        lag = await c.lag()
        assert (lag.pending, lag.undelivered, lag.total) == (4, 6, 10)
        assert StreamLag(pending=4, undelivered=None).total is None  # unknown, not 4

    run(keys, scenario)


def test_large_ack_lists(keys: Keys) -> None:
    """ack() of tens of thousands of ids acks them all (chunked, one round trip)."""
    n = 25_000

    async def scenario(client: aioredis.Redis) -> None:
        c = consumer(client, keys, count=10_000)
        await c.ensure_group()
        ids = await StreamProducer(client, stream=keys.stream).add_events(events(n))
        assert len(ids) == n
        got = await read_all(c)
        assert len(got) == n
        assert await c.ack([e.entry_id for e in got]) == n
        assert (await c.lag()).pending == 0

    run(keys, scenario)


def test_from_settings_owns_and_closes_its_client(keys: Keys) -> None:
    """A consumer built from settings reads with its own client and closes it."""

    async def scenario(client: aioredis.Redis) -> None:
        settings = Settings(
            stream_url=SecretStr(keys.url),
            stream_key=keys.stream,
            consumer_group=GROUP,
            consumer_name="from-settings",
            dead_letter_stream=keys.dead,
            block_ms=10,
        )
        async with StreamConsumer.from_settings(settings) as c:
            await c.ensure_group()
            await StreamProducer(client, stream=keys.stream).add_events(events(2), per_entry=2)
            got = await c.read()
            assert [len(e.lines) for e in got] == [2]
            assert await c.read() == []  # blocks 10 ms, then nothing

    run(keys, scenario)


def test_unreachable_redis_raises_ingest_error_without_the_password() -> None:
    """A connection failure is an IngestError that says what to check and hides the URL."""

    async def main() -> None:
        client = aioredis.Redis.from_url(
            "redis://:hunter2-secret@127.0.0.1:1/0", socket_connect_timeout=1
        )
        try:
            c = StreamConsumer(client, stream="s", group="g", consumer="c", dead_letter_stream="d")
            with pytest.raises(IngestError, match="reachable") as info:
                await c.ensure_group()
            assert "hunter2" not in str(info.value)
            assert "hunter2" not in repr(c)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_bad_options_are_config_errors() -> None:
    """Same stream for input and dead letters, or a str-decoding client, fail at construction."""

    async def main() -> None:
        plain = aioredis.Redis()
        decoding = aioredis.Redis(decode_responses=True)
        try:
            with pytest.raises(ConfigError, match="dead_letter_stream"):
                StreamConsumer(plain, stream="s", group="g", consumer="c", dead_letter_stream="s")
            with pytest.raises(ConfigError, match="decode_responses=False"):
                StreamConsumer(
                    decoding, stream="s", group="g", consumer="c", dead_letter_stream="d"
                )
            with pytest.raises(ValueError, match="newline"):
                await StreamProducer(plain, stream="s").add_events([b"{}\n"], per_entry=2)
        finally:
            await plain.aclose()
            await decoding.aclose()

    asyncio.run(main())
