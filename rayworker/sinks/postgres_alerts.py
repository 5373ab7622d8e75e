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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Final, Self

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from rayworker.alerts import Alert
from rayworker.checkpoint import Checkpoint
from rayworker.clock import Clock, SystemClock
from rayworker.errors import SinkError
from rayworker.sinks.alert_store import (
    TREND_PERIODS,
    Action,
    AlertStats,
    Cursor,
    LifecycleActions,
    MigrationError,
    Sort,
    StoredAlert,
    Transition,
    TrendPoint,
    alert_values,
    apply_action,
    check_actor,
    check_list,
    check_page,
    check_retention,
    fold_batch,
    lifecycle_values,
    not_found,
    require_aware,
    store_text,
    stored_alert,
    stored_groups,
    stored_transition,
    tally_stats,
    transition_values,
    us_to_dt,
)
from rayworker.sinks.migrate import MigrationStatus, check_postgres, migrate_postgres

__all__ = ["PostgresAlertStore", "PostgresStoreConfig"]


_UPSERT: Final = """
INSERT INTO alerts (
    id, tenant_id, fingerprint, rule_id, rule_version, "group", severity, type, title,
    description, source, metadata, tags, evidence, evidence_window, occurrences, count,
    first_seen, last_seen, period_start, period_end, trace_id, created_at, updated_at
)
SELECT u.id, u.tenant_id, u.fingerprint, u.rule_id, u.rule_version, u.grp::jsonb, u.severity,
    u.type, u.title, u.description, u.source, u.metadata::jsonb, u.tags::jsonb,
    u.evidence::jsonb, u.evidence_window::jsonb, u.occurrences, u.count, u.first_seen,
    u.last_seen, u.period_start, u.period_end, u.trace_id, $23, $23
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
    $15::text[], $16::int[], $17::int[], $18::timestamptz[], $19::timestamptz[],
    $20::timestamptz[], $21::timestamptz[], $22::text[]
) AS u(id, tenant_id, fingerprint, rule_id, rule_version, grp, severity, type, title,
    description, source, metadata, tags, evidence, evidence_window, occurrences, count,
    first_seen, last_seen, period_start, period_end, trace_id)
ON CONFLICT (id) DO UPDATE SET
    trace_id = COALESCE(alerts.trace_id, EXCLUDED.trace_id),
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
    " AND ($5::timestamptz IS NULL OR last_seen < $5"
    " OR (last_seen = $5 AND id < $6::text))"
    " ORDER BY CASE WHEN $7::text = 'severity' THEN (CASE severity WHEN 'CRITICAL' THEN 0"
    " WHEN 'HIGH' THEN 1 WHEN 'MEDIUM' THEN 2 WHEN 'LOW' THEN 3 WHEN 'INFO' THEN 4 ELSE 5 END)"
    " ELSE 0 END, last_seen DESC, id DESC LIMIT $8 OFFSET $9"
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


def _as_is(value: datetime) -> datetime:
    return value  # asyncpg decodes timestamptz to an aware datetime already


def _row(r: asyncpg.Record) -> StoredAlert:
    return stored_alert(r, _as_is)


_TIME_COLUMNS: Final = frozenset({"first_seen", "last_seen", "period_start", "period_end"})
_UPSERT_COLUMNS: Final = (
    "id", "tenant_id", "fingerprint", "rule_id", "rule_version", "group", "severity", "type",
    "title", "description", "source", "metadata", "tags", "evidence", "evidence_window",
    "occurrences", "count", "first_seen", "last_seen", "period_start", "period_end", "trace_id",
)  # fmt: skip


def _columns(batch: Sequence[Alert]) -> list[list[Any]]:
    """One array per parameter of :data:`_UPSERT` (``unnest`` turns them back into rows)."""
    rows = [alert_values(a) for a in batch]
    return [
        [us_to_dt(r[name]) for r in rows] if name in _TIME_COLUMNS else [r[name] for r in rows]
        for name in _UPSERT_COLUMNS
    ]


def _after(after: Cursor | None) -> tuple[datetime | None, str | None]:
    return (None, None) if after is None else (after.last_seen, store_text(after.id))


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
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # E.g. the server shutting down between connecting and checking: an outage like
            # any other, which callers retry (SinkError), not a bug.
            await self.close()
            msg = f"the PostgreSQL alert store failed while opening: {type(exc).__name__}: {exc}"
            raise SinkError(msg) from exc
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
        key, owner = store_text(alert_id), store_text(tenant)
        async with self._conn(f"{action} an alert") as conn, conn.transaction():
            found = await conn.fetchrow(
                "SELECT * FROM alerts WHERE id = $1 AND tenant_id = $2 FOR UPDATE", key, owner
            )
            if found is None:
                raise not_found(alert_id)
            updated, record = apply_action(_row(found), action, by=by, note=note, at=at)
            values = lifecycle_values(updated)
            written = await conn.fetchrow(
                _LIFECYCLE_UPDATE,
                key,
                owner,
                values["status"],
                values["acknowledged"],
                values["acknowledged_at"],
                values["acknowledged_by"],
                values["resolved"],
                values["resolved_at"],
                values["resolved_by"],
                values["resolution_notes"],
                values["updated_at"],
            )
            await conn.execute(_INSERT_TRANSITION, *transition_values(record))
        if written is None:  # pragma: no cover - the row is locked FOR UPDATE above
            raise not_found(alert_id)
        return _row(written)

    async def cleanup_resolved(self, tenant: str, *, older_than: timedelta, now: datetime) -> int:
        """Delete resolved and dismissed alerts (and their history) closed before the cutoff."""
        check_retention(older_than)
        cutoff = require_aware(now, "now") - older_than
        async with self._conn("clean up resolved alerts") as conn:
            deleted = await conn.fetchval(_CLEANUP, store_text(tenant), cutoff)
        return int(deleted)

    # ----------------------------------------------------------------- reads

    async def get(self, tenant: str, alert_id: str) -> StoredAlert | None:
        """One of the tenant's alerts, or None."""
        async with self._conn("read an alert") as conn:
            found = await conn.fetchrow(
                "SELECT * FROM alerts WHERE id = $1 AND tenant_id = $2",
                store_text(alert_id),
                store_text(tenant),
            )
        return None if found is None else _row(found)

    async def list_active(
        self, tenant: str, *, limit: int = 50, offset: int = 0, after: Cursor | None = None
    ) -> builtins.list[StoredAlert]:
        """Active and acknowledged alerts, newest first."""
        check_page(limit, offset)
        async with self._conn("list active alerts") as conn:
            rows = await conn.fetch(_ACTIVE_PAGE, store_text(tenant), *_after(after), limit, offset)
        return [_row(r) for r in rows]

    async def count_active(self, tenant: str) -> int:
        """How many of the tenant's alerts are active or acknowledged."""
        async with self._conn("count active alerts") as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM alerts WHERE tenant_id = $1"
                " AND status IN ('active', 'acknowledged')",
                store_text(tenant),
            )
        return int(n)

    async def transitions(self, tenant: str, alert_id: str) -> builtins.list[Transition]:
        """The alert's lifecycle history, oldest first."""
        async with self._conn("read alert transitions") as conn:
            rows = await conn.fetch(
                'SELECT alert_id, tenant_id, from_status, to_status, "by", at, note'
                " FROM alert_transitions WHERE tenant_id = $1 AND alert_id = $2 ORDER BY id",
                store_text(tenant),
                store_text(alert_id),
            )
        return [stored_transition(r, _as_is) for r in rows]

    async def stats(self, tenant: str, *, now: datetime) -> AlertStats:
        """Counts by status, severity and rule, and trends before ``now``."""
        now = require_aware(now, "now")
        cutoffs = [now - span for _, span in TREND_PERIODS]
        async with self._conn("compute alert statistics") as conn:
            groups = await conn.fetch(_STATS_GROUPS, store_text(tenant))
            t = await conn.fetchrow(_STATS_TRENDS, store_text(tenant), *cutoffs, now)
        if t is None:  # pragma: no cover - an aggregate always returns one row
            msg = "PostgreSQL returned no row for an aggregate query"
            raise SinkError(msg)
        trends = tuple(
            TrendPoint(name, int(t[f"c{i}"]), int(t[f"r{i}"]))
            for i, (name, _) in enumerate(TREND_PERIODS, start=1)
        )
        return tally_stats(stored_groups(groups), trends)

    async def list(
        self,
        tenant: str,
        *,
        status: str | None = None,
        severity: str | None = None,
        rule_id: str | None = None,
        sort: Sort = "newest",
        limit: int = 50,
        offset: int = 0,
        after: Cursor | None = None,
    ) -> builtins.list[StoredAlert]:
        """The tenant's alerts matching every given filter, newest (or most severe) first."""
        check_page(limit, offset)
        check_list(sort, after)
        filters = [None if f is None else store_text(f) for f in (status, severity, rule_id)]
        async with self._conn("list alerts") as conn:
            rows = await conn.fetch(
                _FILTERED_PAGE, store_text(tenant), *filters, *_after(after), sort, limit, offset
            )
        return [_row(r) for r in rows]

    # ----------------------------------------------------------------- checkpoints

    async def save_checkpoint(self, pipeline: str, checkpoint: Checkpoint) -> None:
        """Write (or overwrite) one owner's checkpoint of one barrier."""
        async with self._conn("save a checkpoint") as conn:
            await conn.execute(
                _SAVE_CHECKPOINT,
                pipeline,
                checkpoint.owner,
                checkpoint.barrier,
                checkpoint.position,
                checkpoint.state,
            )

    async def latest_checkpoint(self, pipeline: str, owner: str) -> Checkpoint | None:
        """The owner's checkpoint with the highest barrier, or None."""
        async with self._conn("read a checkpoint") as conn:
            found = await conn.fetchrow(_LATEST_CHECKPOINT, pipeline, owner)
        return None if found is None else _checkpoint(found)

    async def load_checkpoint(self, pipeline: str, owner: str, barrier: int) -> Checkpoint | None:
        """The owner's checkpoint of exactly ``barrier``, or None."""
        async with self._conn("read a checkpoint") as conn:
            found = await conn.fetchrow(_LOAD_CHECKPOINT, pipeline, owner, barrier)
        return None if found is None else _checkpoint(found)

    async def prune_checkpoints(self, pipeline: str, below: int) -> int:
        """Delete every checkpoint of barriers below ``below``; returns rows deleted."""
        async with self._conn("prune checkpoints") as conn:
            status = await conn.execute(
                "DELETE FROM checkpoints WHERE pipeline = $1 AND barrier < $2", pipeline, below
            )
        return int(status.split()[-1])

    async def clear_checkpoints(self, pipeline: str) -> int:
        """Delete all of a pipeline's checkpoints (a fresh start); returns rows deleted."""
        async with self._conn("clear checkpoints") as conn:
            status = await conn.execute("DELETE FROM checkpoints WHERE pipeline = $1", pipeline)
        return int(status.split()[-1])


_SAVE_CHECKPOINT: Final = (
    "INSERT INTO checkpoints (pipeline, owner, barrier, position, state)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pipeline, owner, barrier) DO UPDATE SET"
    " position = excluded.position, state = excluded.state, created_at = now()"
)
_LATEST_CHECKPOINT: Final = (
    "SELECT owner, barrier, position, state FROM checkpoints WHERE pipeline = $1 AND owner = $2"
    " ORDER BY barrier DESC LIMIT 1"
)
_LOAD_CHECKPOINT: Final = (
    "SELECT owner, barrier, position, state FROM checkpoints"
    " WHERE pipeline = $1 AND owner = $2 AND barrier = $3"
)


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(str(row["owner"]), int(row["barrier"]), int(row["position"]), row["state"])
