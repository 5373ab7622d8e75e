"""Silences persisted where the alerts are: SQLite (embedded) or PostgreSQL.

The table comes from migration ``0002_silences`` (``rayworker db migrate``); a store on an
unmigrated database raises :class:`~rayworker.sinks.alert_store.MigrationError` saying so.
Every read and change is scoped by tenant: another tenant's silence id is "not found",
exactly like an unknown one. Expiring is a read-check-write in one transaction
(``BEGIN IMMEDIATE`` in SQLite, ``SELECT ... FOR UPDATE`` in PostgreSQL). Only
parameterised SQL; the DSN never appears in a message.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar

import asyncpg
from pydantic import SecretStr

from rayworker.errors import SinkError
from rayworker.notify.silences import Silence, SilenceError, expire_silence
from rayworker.settings import Settings
from rayworker.sinks.alert_store import MigrationError
from rayworker.sinks.factory import sqlite_path

__all__ = ["PostgresSilenceStore", "SilenceStore", "SqliteSilenceStore", "silence_store"]

T = TypeVar("T")
_COLUMNS: Final = (
    "id, tenant_id, matchers, starts_at, ends_at, created_by, comment, created_at, updated_at"
)
_NOT_MIGRATED: Final = (
    "the silences table is missing; run `rayworker db migrate` (migration 0002_silences)"
)


def _not_found(tenant: str, silence_id: str) -> SilenceError:
    return SilenceError(f"silence {silence_id} not found for tenant {tenant}")


class SilenceStore(Protocol):
    """Persistent silences (see the module docstring)."""

    async def add(self, silence: Silence) -> None:
        """Insert a new silence."""
        ...

    async def expire(self, tenant: str, silence_id: str, now: float) -> Silence:
        """End a silence now; raises :class:`SilenceError` when unknown or already expired."""
        ...

    async def for_tenant(
        self, tenant: str, now: float, *, include_expired: bool = False
    ) -> list[Silence]:
        """The tenant's silences, soonest end first."""
        ...

    async def current(self, now: float) -> list[Silence]:
        """Every tenant's silences not yet expired (what the notifier loads)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


# --------------------------------------------------------------------------- SQLite


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _from_sqlite(row: tuple[Any, ...]) -> Silence:
    return Silence.from_state(
        {
            "id": row[0],
            "tenant": row[1],
            "matchers": json.loads(row[2]),
            "starts_at": row[3] / 1_000_000,
            "ends_at": row[4] / 1_000_000,
            "created_by": row[5],
            "comment": row[6],
            "created_at": row[7] / 1_000_000,
            "updated_at": row[8] / 1_000_000,
        }
    )


class SqliteSilenceStore:
    """Silences in the embedded SQLite alert database; one thread owns the connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="silences")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'silences'"
            ).fetchone()
            if found is None:
                conn.close()
                raise MigrationError(_NOT_MIGRATED)
            self._conn = conn
        return self._conn

    async def _run(self, work: Any) -> Any:
        def call() -> Any:
            conn = self._connection()
            try:
                return work(conn)
            except sqlite3.Error as exc:
                msg = f"the SQLite silence store failed: {exc}"
                raise SinkError(msg) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def add(self, silence: Silence) -> None:
        """Insert a new silence."""
        s = silence.to_state()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO silences ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
                (
                    s["id"],
                    s["tenant"],
                    json.dumps(s["matchers"]),
                    _us(s["starts_at"]),
                    _us(s["ends_at"]),
                    s["created_by"],
                    s["comment"],
                    _us(s["created_at"]),
                    _us(s["updated_at"]),
                ),
            )

        await self._run(work)

    async def expire(self, tenant: str, silence_id: str, now: float) -> Silence:
        """End a silence now (one transaction)."""

        def work(conn: sqlite3.Connection) -> Silence:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM silences WHERE tenant_id = ? AND id = ?",  # noqa: S608 - constant columns
                    (tenant, silence_id),
                ).fetchone()
                if row is None:
                    raise _not_found(tenant, silence_id)
                expired = expire_silence(_from_sqlite(row), now)
                conn.execute(
                    "UPDATE silences SET starts_at = ?, ends_at = ?, updated_at = ?"
                    " WHERE tenant_id = ? AND id = ?",
                    (
                        _us(expired.starts_at),
                        _us(expired.ends_at),
                        _us(expired.updated_at),
                        tenant,
                        silence_id,
                    ),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return expired

        result: Silence = await self._run(work)
        return result

    async def for_tenant(
        self, tenant: str, now: float, *, include_expired: bool = False
    ) -> list[Silence]:
        """The tenant's silences, soonest end first."""

        def work(conn: sqlite3.Connection) -> list[Silence]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM silences WHERE tenant_id = ?"  # noqa: S608 - constant columns
                " AND (? OR ends_at > ?) ORDER BY ends_at, id",
                (tenant, 1 if include_expired else 0, _us(now)),
            ).fetchall()
            return [_from_sqlite(r) for r in rows]

        result: list[Silence] = await self._run(work)
        return result

    async def current(self, now: float) -> list[Silence]:
        """Every silence not yet expired."""

        def work(conn: sqlite3.Connection) -> list[Silence]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM silences WHERE ends_at > ?",  # noqa: S608 - constant columns
                (_us(now),),
            ).fetchall()
            return [_from_sqlite(r) for r in rows]

        result: list[Silence] = await self._run(work)
        return result

    async def close(self) -> None:
        """Close the connection and its thread."""

        def work() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, work)
        self._executor.shutdown(wait=True)


# --------------------------------------------------------------------------- PostgreSQL


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _from_pg(row: asyncpg.Record) -> Silence:
    matchers = row["matchers"]
    return Silence.from_state(
        {
            "id": row["id"],
            "tenant": row["tenant_id"],
            "matchers": json.loads(matchers) if isinstance(matchers, str) else matchers,
            "starts_at": row["starts_at"].timestamp(),
            "ends_at": row["ends_at"].timestamp(),
            "created_by": row["created_by"],
            "comment": row["comment"],
            "created_at": row["created_at"].timestamp(),
            "updated_at": row["updated_at"].timestamp(),
        }
    )


class PostgresSilenceStore:
    """Silences in the PostgreSQL alert database (a small asyncpg pool)."""

    def __init__(self, dsn: SecretStr, *, search_path: str | None = None) -> None:
        self._dsn = dsn
        self._settings = {} if search_path is None else {"search_path": search_path}
        self._pool: asyncpg.Pool | None = None

    async def _acquire_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            try:
                pool = await asyncpg.create_pool(
                    dsn=self._dsn.get_secret_value(),
                    min_size=1,
                    max_size=2,
                    server_settings=self._settings,
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                msg = (
                    f"could not connect to the PostgreSQL silence store ({type(exc).__name__});"
                    " check the DSN and that the server is up"
                )
                raise SinkError(msg) from exc
            exists = await pool.fetchval("SELECT to_regclass('silences') IS NOT NULL")
            if not exists:
                await pool.close()
                raise MigrationError(_NOT_MIGRATED)
            self._pool = pool
        return self._pool

    async def add(self, silence: Silence) -> None:
        """Insert a new silence."""
        pool = await self._acquire_pool()
        s = silence.to_state()
        await pool.execute(
            f"INSERT INTO silences ({_COLUMNS})"  # noqa: S608 - constant columns
            " VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9)",
            s["id"],
            s["tenant"],
            json.dumps(s["matchers"]),
            _dt(s["starts_at"]),
            _dt(s["ends_at"]),
            s["created_by"],
            s["comment"],
            _dt(s["created_at"]),
            _dt(s["updated_at"]),
        )

    async def expire(self, tenant: str, silence_id: str, now: float) -> Silence:
        """End a silence now (``SELECT ... FOR UPDATE`` in one transaction)."""
        pool = await self._acquire_pool()
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM silences WHERE tenant_id = $1 AND id = $2"  # noqa: S608 - constant columns
                " FOR UPDATE",
                tenant,
                silence_id,
            )
            if row is None:
                raise _not_found(tenant, silence_id)
            expired = expire_silence(_from_pg(row), now)
            await conn.execute(
                "UPDATE silences SET starts_at = $1, ends_at = $2, updated_at = $3"
                " WHERE tenant_id = $4 AND id = $5",
                _dt(expired.starts_at),
                _dt(expired.ends_at),
                _dt(expired.updated_at),
                tenant,
                silence_id,
            )
        return expired

    async def for_tenant(
        self, tenant: str, now: float, *, include_expired: bool = False
    ) -> list[Silence]:
        """The tenant's silences, soonest end first."""
        pool = await self._acquire_pool()
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM silences WHERE tenant_id = $1"  # noqa: S608 - constant columns
            " AND ($2 OR ends_at > $3) ORDER BY ends_at, id",
            tenant,
            include_expired,
            _dt(now),
        )
        return [_from_pg(r) for r in rows]

    async def current(self, now: float) -> list[Silence]:
        """Every silence not yet expired."""
        pool = await self._acquire_pool()
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM silences WHERE ends_at > $1",  # noqa: S608 - constant columns
            _dt(now),
        )
        return [_from_pg(r) for r in rows]

    async def close(self) -> None:
        """Close the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def silence_store(settings: Settings) -> SqliteSilenceStore | PostgresSilenceStore:
    """The silence store of the alert database the settings name."""
    if settings.alerts_backend == "sqlite":
        return SqliteSilenceStore(sqlite_path(settings.alerts_dsn.get_secret_value()))
    if settings.alerts_backend == "postgresql":
        return PostgresSilenceStore(settings.alerts_dsn)
    msg = "silences need a SQLite or PostgreSQL alert store; fix RAYWORKER_ALERTS_DSN"
    raise SinkError(msg)
