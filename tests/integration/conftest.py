"""Shared fixtures for tests against real services: Redis, PostgreSQL and one Ray cluster.

A missing service skips the test locally and fails it when ``CI`` is set (STYLE example 6).
Ray starts once per test session (about 6-9 s here), or is attached when ``RAY_ADDRESS`` is
set, and every test that needs it shares it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, NoReturn

import asyncpg
import pytest
import ray
import redis.asyncio as aioredis

from rayworker.chaos import scratch_schema
from rayworker.ingest.redis_streams import StreamConsumer
from rayworker.pipeline.app import Pipeline, PumpStats
from rayworker.pipeline.runtime import connect_ray
from rayworker.pipeline.sources import StreamBatches
from tests.integration.http_receiver import HttpReceiver

REDIS_URL = os.environ.get("RAYWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "RAYWORKER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, skip locally."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


async def _ping_redis() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _ping_postgres() -> None:
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    await conn.close()


def _require(ping: Callable[[], Coroutine[Any, Any, None]], service: str, target: str) -> str:
    """``target`` once ``ping`` succeeded against it; else unavailable."""
    try:
        asyncio.run(ping())
    except Exception as exc:  # noqa: BLE001 - any failure means the service is not usable
        unavailable(f"{service} unreachable at {target}: {type(exc).__name__}")
    return target


@pytest.fixture(scope="session")
def live_redis_url() -> str:
    """The test Redis URL, once it has answered a PING."""
    return _require(_ping_redis, "Redis", REDIS_URL)


@pytest.fixture(scope="session")
def live_postgres_dsn() -> str:
    """The test PostgreSQL DSN, once a connection has opened."""
    return _require(_ping_postgres, "PostgreSQL", POSTGRES_DSN)


async def pump_until_read(pipeline: Pipeline, consumer: StreamConsumer, events: int) -> PumpStats:
    """Pump the consumer's stream through the pipeline until the router has read ``events``
    events and nothing is pending; returns the pump's statistics."""
    stop = asyncio.Event()
    source = StreamBatches(consumer, stop)

    async def watch() -> None:
        # Redis may not know the undelivered count (lag is then None), so the router's own
        # count says when every event has been read.
        while True:
            seen = (await pipeline.router.stats.remote()).get("events", 0)
            if seen == events and (await consumer.lag()).pending == 0:
                stop.set()
                return
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    stats = await pipeline.pump(
        source.__aiter__(), ack=source.ack, dead_letter=source.dead_letter, stop=stop
    )
    await watcher
    return stats


@pytest.fixture
def pg_dsn(live_postgres_dsn: str) -> Iterator[str]:
    """A DSN whose connections use a fresh schema, dropped afterwards."""
    with scratch_schema(live_postgres_dsn, secrets.token_hex(5), prefix="rw_test_") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One Ray cluster for the whole session; yields its GCS address for subprocesses."""
    address = connect_ray(os.environ.get("RAY_ADDRESS"), num_cpus=4)
    yield address
    ray.shutdown()


@pytest.fixture
def http_receiver() -> Iterator[Callable[..., HttpReceiver]]:
    """Starts HTTP receivers; stops them after the test."""
    started: list[HttpReceiver] = []

    def start(statuses: list[int] | None = None) -> HttpReceiver:
        receiver = HttpReceiver(statuses)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()
