"""The PostgreSQL alert store (asyncpg).

One :class:`PostgresAlertStore` owns one asyncpg pool; create one per process (pools do not
cross process boundaries, so each Ray actor or worker process builds its own) and
:meth:`~PostgresAlertStore.close` it on shutdown. The DSN is a :class:`pydantic.SecretStr`:
it never appears in reprs, logs or error messages.

* Batch upserts are a single ``INSERT ... SELECT FROM unnest(...) ON CONFLICT (id) DO UPDATE
  ... WHERE alerts.tenant_id = EXCLUDED.tenant_id``: one round trip per batch, idempotent, and
  an id owned by another tenant is never overwritten.
* Lifecycle actions run in one transaction: ``SELECT ... FOR UPDATE`` (tenant-scoped), the
  pure state machine, ``UPDATE`` and the transition row.
* All SQL is parameterised; identifiers are constants. ``search_path`` is a connection setting
  (a server parameter), never spliced into SQL.

``open(migrate=False)`` (the default here: production migrates as a deliberate step) refuses
to start on a database with pending migrations; ``open(migrate=True)`` applies them.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Final, Self, cast

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from rayworker.alerts import Alert
from rayworker.clock import Clock, SystemClock
from rayworker.errors import SinkError
from rayworker.sinks.alert_store import (
    TREND_PERIODS,
    Action,
    AlertStats,
    Cursor,
    LifecycleActions,
    MigrationError,
    Status,
    StoredAlert,
    Transition,
    TrendPoint,
    apply_action,
    check_actor,
    check_page,
    check_retention,
    evidence_window,
    fold_batch,
    not_found,
    require_aware,
    tally_stats,
    us_to_dt,
)
from rayworker.sinks.migrate import MigrationStatus, check_postgres, migrate_postgres

__all__ = ["PostgresAlertStore", "PostgresStoreConfig"]


_UPSERT: Final = """
INSERT INTO alerts (
    id, tenant_id, fingerprint, rule_id, rule_version, "group", severity, type, title,
    description, source, metadata, tags, evidence, evidence_window, occurrences, count,
    first_seen, last_seen, period_start, period_end, created_at, updated_at
)
SELECT u.id, u.tenant_id, u.fingerprint, u.rule_id, u.rule_version, u.grp::jsonb, u.severity,
    u.type, u.title, u.description, u.source, u.metadata::jsonb, u.tags::jsonb,
    u.evidence::jsonb, u.evidence_window::jsonb, u.occurrences, u.count, u.first_seen,
    u.last_seen, u.period_start, u.period_end, $22, $22
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
    $15::text[], $16::int[], $17::int[], $18::timestamptz[], $19::timestamptz[],
    $20::timestamptz[], $21::timestamptz[]
) AS u(id, tenant_id, fingerprint, rule_id, rule_version, grp, severity, type, title,
    description, source, metadata, tags, evidence, evidence_window, occurrences, count,
    first_seen, last_seen, period_start, period_end)
ON CONFLICT (id) DO UPDATE SET
    occurrences = GREATEST(alerts.occurrences, EXCLUDED.occurrences),
    last_seen = GREATEST(alerts.last_seen, EXCLUDED.last_seen),
    first_seen = LEAST(alerts.first_seen, EXCLUDED.first_seen),
    count = CASE WHEN EXCLUDED.occurrences >= alerts.occurrences
        THEN EXCLUDED.count ELSE alerts.count END,
    evidence = CASE WHEN EXCLUDED.occurrences >= alerts.occurrences
        THEN EXCLUDED.evidence ELSE alerts.evidence END,
    evidence_window = CASE WHEN EXCLUDED.occurrences >= alerts.occurrences
        THEN EXCLUDED.evidence_window ELSE alerts.evidence_window END,
    description = CASE WHEN EXCLUDED.occurrences >= alerts.occurrences
        THEN EXCLUDED.description ELSE alerts.description END,
    title = CASE WHEN EXCLUDED.occurrences >= alerts.occurrences
        THEN EXCLUDED.title ELSE alerts.title END,
    metadata = CASE WHEN EXCLUDED.occurrences >= alerts.occurrences
        THEN EXCLUDED.metadata ELSE alerts.metadata END,
    updated_at = EXCLUDED.updated_at
WHERE alerts.tenant_id = EXCLUDED.tenant_id
RETURNING id
"""

_ACTIVE_PAGE: Final = (
    "SELECT * FROM alerts WHERE tenant_id = $1 AND status IN ('active', 'acknowledged')"
    " AND ($2::timestamptz IS NULL OR last_seen < $2"
    " OR (last_seen = $2 AND id < $3::text))"
    " ORDER BY last_seen DESC, id DESC LIMIT $4 OFFSET $5"
)
_FILTERED_PAGE: Final = (
    "SELECT * FROM alerts WHERE tenant_id = $1"
    " AND ($2::text IS NULL OR status = $2)"
    " AND ($3::text IS NULL OR severity = $3)"
    " AND ($4::text IS NULL OR rule_id = $4)"
    " ORDER BY last_seen DESC, id DESC LIMIT $5 OFFSET $6"
)
_LIFECYCLE_UPDATE: Final = (
    "UPDATE alerts SET status = $3, acknowledged = $4, acknowledged_at = $5,"
    " acknowledged_by = $6, resolved = $7, resolved_at = $8, resolved_by = $9,"
    " resolution_notes = $10, updated_at = $11"
    " WHERE id = $1 AND tenant_id = $2 RETURNING *"
)
_INSERT_TRANSITION: Final = (
    'INSERT INTO alert_transitions (alert_id, tenant_id, from_status, to_status, "by", at, note)'
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
_STATS_GROUPS: Final = (
    "SELECT status, severity, rule_id, count(*) AS n FROM alerts"
    " WHERE tenant_id = $1 GROUP BY status, severity, rule_id"
)
_STATS_TRENDS: Final = (
    "SELECT"
    " count(*) FILTER (WHERE created_at >= $2 AND created_at <= $5) AS c1,"
    " count(*) FILTER (WHERE resolved_at >= $2 AND resolved_at <= $5) AS r1,"
    " count(*) FILTER (WHERE created_at >= $3 AND created_at <= $5) AS c2,"
    " count(*) FILTER (WHERE resolved_at >= $3 AND resolved_at <= $5) AS r2,"
    " count(*) FILTER (WHERE created_at >= $4 AND created_at <= $5) AS c3,"
    " count(*) FILTER (WHERE resolved_at >= $4 AND resolved_at <= $5) AS r3"
    " FROM alerts WHERE tenant_id = $1"
)
_CLEANUP: Final = (
    "WITH gone AS (DELETE FROM alerts WHERE tenant_id = $1"
    " AND status IN ('resolved', 'dismissed') AND resolved_at < $2 RETURNING id),"
    " history AS (DELETE FROM alert_transitions WHERE tenant_id = $1"
    " AND alert_id IN (SELECT id FROM gone))"
    " SELECT count(*) FROM gone"
)


class PostgresStoreConfig(BaseModel):
    """Connection settings of the PostgreSQL alert store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: SecretStr = Field(description="PostgreSQL DSN, e.g. postgresql://user@host:5432/db.")
    min_size: int = Field(default=1, ge=0, le=100, description="Connections kept open.")
    max_size: int = Field(default=10, ge=1, le=100, description="Most connections at once.")
    search_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Schema search path set on every connection (None: the server default).",
    )
    command_timeout: float = Field(
        default=30.0, gt=0, le=600, description="Seconds before a statement is abandoned."
    )

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        if self.min_size > self.max_size:
            msg = (
                f"Got min_size={self.min_size} and max_size={self.max_size}. min_size must not"
                " exceed max_size."
            )
            raise ValueError(msg)
        return self


def _row(r: asyncpg.Record) -> StoredAlert:
    return StoredAlert(
        id=r["id"],
        tenant_id=r["tenant_id"],
        fingerprint=r["fingerprint"],
        rule_id=r["rule_id"],
        rule_version=r["rule_version"],
        group=json.loads(r["group"]),
        severity=r["severity"],
        type=r["type"],
        title=r["title"],
        description=r["description"],
        source=r["source"],
        status=cast("Status", r["status"]),
        metadata=json.loads(r["metadata"]),
        tags=json.loads(r["tags"]),
        evidence=json.loads(r["evidence"]),
        evidence_window=json.loads(r["evidence_window"]),
        occurrences=r["occurrences"],
        count=r["count"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        period_start=r["period_start"],
        period_end=r["period_end"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        acknowledged=r["acknowledged"],
        acknowledged_at=r["acknowledged_at"],
        acknowledged_by=r["acknowledged_by"],
        resolved=r["resolved"],
        resolved_at=r["resolved_at"],
        resolved_by=r["resolved_by"],
        resolution_notes=r["resolution_notes"],
        trace_id=r["trace_id"],
    )


def _columns(batch: Sequence[Alert]) -> list[list[Any]]:
    return [
        [a.id for a in batch],
        [a.tenant_id for a in batch],
        [a.fingerprint for a in batch],
        [a.rule_id for a in batch],
        [a.rule_version for a in batch],
        [json.dumps(a.group) for a in batch],
        [a.severity for a in batch],
        [a.type for a in batch],
        [a.title for a in batch],
        [a.description for a in batch],
        [a.source for a in batch],
        [json.dumps(a.metadata) for a in batch],
        [json.dumps(a.tags) for a in batch],
        [json.dumps(a.evidence_ids) for a in batch],
        [json.dumps(evidence_window(a)) for a in batch],
        [a.occurrences for a in batch],
        [a.count for a in batch],
        [us_to_dt(a.first_seen_us) for a in batch],
        [us_to_dt(a.last_seen_us) for a in batch],
        [us_to_dt(a.period_start_us) for a in batch],
        [us_to_dt(a.period_end_us) for a in batch],
    ]


class PostgresAlertStore(LifecycleActions):
    """An :class:`~rayworker.sinks.alert_store.AlertStore` in PostgreSQL, one pool per store."""

    def __init__(
        self,
        dsn: SecretStr | str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        search_path: str | None = None,
        command_timeout: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self._config = PostgresStoreConfig(
            dsn=dsn if isinstance(dsn, SecretStr) else SecretStr(dsn),
            min_size=min_size,
            max_size=max_size,
            search_path=search_path,
            command_timeout=command_timeout,
        )
        self._clock: Clock = clock or SystemClock()
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def from_config(cls, config: PostgresStoreConfig, *, clock: Clock | None = None) -> Self:
        """Build a store from validated settings."""
        return cls(
            config.dsn,
            min_size=config.min_size,
            max_size=config.max_size,
            search_path=config.search_path,
            command_timeout=config.command_timeout,
            clock=clock,
        )

    def __repr__(self) -> str:
        c = self._config
        return f"PostgresAlertStore(dsn=SecretStr('**********'), pool={c.min_size}..{c.max_size})"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- plumbing

    async def open(self, *, migrate: bool = False) -> None:
        """Create the pool; apply (``migrate=True``) or require the migrations."""
        if self._pool is not None:
            return
        c = self._config
        settings = {} if c.search_path is None else {"search_path": c.search_path}
        try:
            pool = await asyncpg.create_pool(
                dsn=c.dsn.get_secret_value(),
                min_size=c.min_size,
                max_size=c.max_size,
                command_timeout=c.command_timeout,
                server_settings=settings,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The DSN stays out of the message; the exception type says what failed.
            msg = (
                f"could not connect to the PostgreSQL alert store ({type(exc).__name__});"
                " check the DSN, that the server is up and that the role may log in"
            )
            raise SinkError(msg) from exc
        self._pool = pool
        try:
            async with pool.acquire() as conn:
                if migrate:
                    await migrate_postgres(conn)
                status = await check_postgres(conn)
        except BaseException:
            await self.close()
            raise
        if not status.up_to_date:
            await self.close()
            msg = (
                f"the PostgreSQL alert store has {status.describe()}; run the migrations"
                " (open(migrate=True)) before starting workers"
            )
            raise MigrationError(msg)

    async def close(self) -> None:
        """Close the pool (waits for connections in use to be released)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        pool = self._pool
        if pool is None:
            msg = "the PostgreSQL alert store is not open; call `await store.open()` first"
            raise SinkError(msg)
        try:
            async with pool.acquire() as conn:
                yield conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            msg = f"PostgreSQL alert store failed to {what}: {type(exc).__name__}: {exc}"
            raise SinkError(msg) from exc

    async def check(self) -> MigrationStatus:
        """Applied and pending migrations of this database."""
        async with self._conn("check migrations") as conn:
            return await check_postgres(conn)

    # ----------------------------------------------------------------- writes

    async def upsert(self, alerts: Sequence[Alert]) -> int:
        """Insert or update alerts by id in one statement; returns distinct ids written."""
        batch = fold_batch(alerts)
        if not batch:
            return 0
        now = self._clock.now()
        async with self._conn("upsert alerts") as conn:
            rows = await conn.fetch(_UPSERT, *_columns(batch), now)
        return len(rows)

    async def _act(
        self, tenant: str, alert_id: str, action: Action, by: str, note: str | None
    ) -> StoredAlert:
        check_actor(by)
        at = self._clock.now()
        async with self._conn(f"{action} an alert") as conn, conn.transaction():
            found = await conn.fetchrow(
                "SELECT * FROM alerts WHERE id = $1 AND tenant_id = $2 FOR UPDATE", alert_id, tenant
            )
            if found is None:
                raise not_found(alert_id)
            updated, record = apply_action(_row(found), action, by=by, note=note, at=at)
            written = await conn.fetchrow(
                _LIFECYCLE_UPDATE,
                alert_id,
                tenant,
                updated.status,
                updated.acknowledged,
                updated.acknowledged_at,
                updated.acknowledged_by,
                updated.resolved,
                updated.resolved_at,
                updated.resolved_by,
                updated.resolution_notes,
                updated.updated_at,
            )
            await conn.execute(
                _INSERT_TRANSITION,
                record.alert_id,
                record.tenant_id,
                record.from_status,
                record.to_status,
                record.by,
                record.at,
                record.note,
            )
        if written is None:  # pragma: no cover - the row is locked FOR UPDATE above
            raise not_found(alert_id)
        return _row(written)

    async def cleanup_resolved(self, tenant: str, *, older_than: timedelta, now: datetime) -> int:
        """Delete resolved and dismissed alerts (and their history) closed before the cutoff."""
        check_retention(older_than)
        cutoff = require_aware(now, "now") - older_than
        async with self._conn("clean up resolved alerts") as conn:
            deleted = await conn.fetchval(_CLEANUP, tenant, cutoff)
        return int(deleted)

    # ----------------------------------------------------------------- reads

    async def get(self, tenant: str, alert_id: str) -> StoredAlert | None:
        """One of the tenant's alerts, or None."""
        async with self._conn("read an alert") as conn:
            found = await conn.fetchrow(
                "SELECT * FROM alerts WHERE id = $1 AND tenant_id = $2", alert_id, tenant
            )
        return None if found is None else _row(found)

    async def list_active(
        self, tenant: str, *, limit: int = 50, offset: int = 0, after: Cursor | None = None
    ) -> builtins.list[StoredAlert]:
        """Active and acknowledged alerts, newest first."""
        check_page(limit, offset)
        async with self._conn("list active alerts") as conn:
            rows = await conn.fetch(
                _ACTIVE_PAGE,
                tenant,
                None if after is None else after.last_seen,
                None if after is None else after.id,
                limit,
                offset,
            )
        return [_row(r) for r in rows]

    async def count_active(self, tenant: str) -> int:
        """How many of the tenant's alerts are active or acknowledged."""
        async with self._conn("count active alerts") as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM alerts WHERE tenant_id = $1"
                " AND status IN ('active', 'acknowledged')",
                tenant,
            )
        return int(n)

    async def transitions(self, tenant: str, alert_id: str) -> builtins.list[Transition]:
        """The alert's lifecycle history, oldest first."""
        async with self._conn("read alert transitions") as conn:
            rows = await conn.fetch(
                'SELECT alert_id, tenant_id, from_status, to_status, "by", at, note'
                " FROM alert_transitions WHERE tenant_id = $1 AND alert_id = $2 ORDER BY id",
                tenant,
                alert_id,
            )
        return [
            Transition(
                r["alert_id"],
                r["tenant_id"],
                r["from_status"],
                r["to_status"],
                r["by"],
                r["at"],
                r["note"],
            )
            for r in rows
        ]

    async def stats(self, tenant: str, *, now: datetime) -> AlertStats:
        """Counts by status, severity and rule, and trends before ``now``."""
        now = require_aware(now, "now")
        cutoffs = [now - span for _, span in TREND_PERIODS]
        async with self._conn("compute alert statistics") as conn:
            groups = await conn.fetch(_STATS_GROUPS, tenant)
            t = await conn.fetchrow(_STATS_TRENDS, tenant, *cutoffs, now)
        if t is None:  # pragma: no cover - an aggregate always returns one row
            msg = "PostgreSQL returned no row for an aggregate query"
            raise SinkError(msg)
        trends = tuple(
            TrendPoint(name, int(t[f"c{i}"]), int(t[f"r{i}"]))
            for i, (name, _) in enumerate(TREND_PERIODS, start=1)
        )
        return tally_stats(
            ((g["status"], g["severity"], g["rule_id"], int(g["n"])) for g in groups), trends
        )

    async def list(
        self,
        tenant: str,
        *,
        status: str | None = None,
        severity: str | None = None,
        rule_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[StoredAlert]:
        """The tenant's alerts matching every given filter, newest first."""
        check_page(limit, offset)
        async with self._conn("list alerts") as conn:
            rows = await conn.fetch(
                _FILTERED_PAGE, tenant, status, severity, rule_id, limit, offset
            )
        return [_row(r) for r in rows]
