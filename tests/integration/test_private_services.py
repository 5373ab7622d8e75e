"""The private Redis and PostgreSQL servers stop and start again on the same port."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.integration.private_services import (  # noqa: F401 - registers the fixtures
    PrivatePostgres,
    PrivateRedis,
    private_postgres_fixture,
    private_redis_fixture,
)

pytestmark = pytest.mark.integration


def test_private_redis_restarts_empty_on_its_port(private_redis: PrivateRedis) -> None:
    """A stopped private Redis refuses connections; started again it answers, with no keys."""

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_connect_timeout=1)
        try:
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            private_redis.stop()
            assert not private_redis.running
            with pytest.raises(RedisConnectionError):
                await client.ping()
            private_redis.start()
            # The same client reconnects to the new process, which kept nothing.
            assert await client.ping()
            assert await client.get("k") is None
        finally:
            await client.aclose()

    asyncio.run(main())


def test_private_postgres_keeps_data_across_a_restart(private_postgres: PrivatePostgres) -> None:
    """Rows written before a stop are there after the start; queries fail while it is down."""

    async def main() -> None:
        conn = await asyncpg.connect(private_postgres.dsn)
        try:
            await conn.execute("CREATE TABLE t (n int)")
            await conn.execute("INSERT INTO t VALUES (1), (2)")
        finally:
            await conn.close()
        private_postgres.stop()
        assert not private_postgres.running
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(private_postgres.dsn, timeout=2)
        started = time.perf_counter()
        private_postgres.start()
        restart_s = time.perf_counter() - started
        conn = await asyncpg.connect(private_postgres.dsn)
        try:
            assert await conn.fetchval("SELECT sum(n) FROM t") == 3
        finally:
            await conn.close()
        print(  # the figures the brief asked for, shown with -s
            f"private PostgreSQL: initdb {private_postgres.initdb_s:.2f} s, starts"
            f" {', '.join(f'{s:.2f}' for s in private_postgres.start_s)} s,"
            f" restart {restart_s:.2f} s"
        )

    asyncio.run(main())
