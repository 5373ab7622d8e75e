"""A tiny, strict migration runner for the alert stores (PostgreSQL and SQLite).

Migrations are the files ``rayworker/sinks/migrations/{dialect}/NNNN_name.sql``, applied in
version order. Each one runs inside its own transaction together with its row in
``schema_migrations(version, applied_at, checksum)``, so a failed migration leaves nothing
behind. The runner refuses to go on when an applied file's SHA-256 checksum no longer matches
(someone edited history: add a new migration instead), or when the database has a version this
code does not know (the database is newer than this rayworker).

:func:`check_postgres` / :func:`check_sqlite` only report; start-up uses them to refuse to run
on an unmigrated database. In PostgreSQL, :func:`migrate_postgres` holds a transaction-level
advisory lock so concurrent workers starting together apply each migration once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Final, Literal

from rayworker.sinks.alert_store import MigrationError

if TYPE_CHECKING:
    from typing import TypeAlias

    import asyncpg
    import asyncpg.pool

    PgConnection: TypeAlias = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

__all__ = [
    "Dialect",
    "Migration",
    "MigrationStatus",
    "check_postgres",
    "check_sqlite",
    "load_migrations",
    "migrate_postgres",
    "migrate_sqlite",
]

Dialect = Literal["postgres", "sqlite"]

# An arbitrary constant key for pg_advisory_xact_lock ("rayworker" in ASCII, truncated).
_LOCK_KEY: Final = 0x7261_7977_6F72_6B
_PG_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    checksum    text NOT NULL
)"""
_SQLITE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY NOT NULL,
    applied_at  TEXT NOT NULL,
    checksum    TEXT NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str
    checksum: str


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Which migrations a database has, and which it still needs."""

    applied: tuple[int, ...]
    pending: tuple[Migration, ...]

    @property
    def up_to_date(self) -> bool:
        """True when nothing is pending."""
        return not self.pending

    def describe(self) -> str:
        """A one-line summary for logs and start-up errors."""
        if self.up_to_date:
            return f"schema up to date ({len(self.applied)} migrations applied)"
        names = ", ".join(m.name for m in self.pending)
        return f"{len(self.pending)} pending migration(s): {names}"


def load_migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """The packaged migrations of a dialect, in version order."""
    folder = resources.files("rayworker.sinks").joinpath("migrations", dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        prefix = name.split("_", 1)[0]
        if not prefix.isdigit():
            msg = f"migration file {dialect}/{name} must start with a version number: 0002_x.sql"
            raise MigrationError(msg)
        data = entry.read_bytes()
        found.append(
            Migration(
                version=int(prefix),
                name=name.removesuffix(".sql"),
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        msg = f"two {dialect} migration files share a version number: {versions}"
        raise MigrationError(msg)
    return tuple(found)


def _status(known: tuple[Migration, ...], applied: dict[int, str]) -> MigrationStatus:
    by_version = {m.version: m for m in known}
    for version, checksum in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            msg = (
                f"the database has migration {version:04d}, which this rayworker does not know;"
                " the database is newer than the code: upgrade rayworker"
            )
            raise MigrationError(msg)
        if migration.checksum != checksum:
            msg = (
                f"migration {migration.name} was changed after it was applied (checksum"
                " mismatch); restore the file and add a new migration for the change"
            )
            raise MigrationError(msg)
    pending = tuple(m for m in known if m.version not in applied)
    return MigrationStatus(tuple(sorted(applied)), pending)


# --------------------------------------------------------------------------- PostgreSQL


async def _pg_applied(conn: PgConnection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {int(r["version"]): str(r["checksum"]) for r in rows}


async def check_postgres(conn: PgConnection) -> MigrationStatus:
    """Report applied and pending migrations; raise :class:`MigrationError` on tampering."""
    return _status(load_migrations("postgres"), await _pg_applied(conn))


async def migrate_postgres(conn: PgConnection) -> tuple[int, ...]:
    """Apply pending migrations in order, each in its own transaction; returns their versions."""
    done: list[int] = []
    for migration in load_migrations("postgres"):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(_PG_TABLE)
            status = _status(load_migrations("postgres"), await _pg_applied(conn))
            if migration.version in status.applied:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                migration.version,
                migration.checksum,
            )
            done.append(migration.version)
    return tuple(done)


# --------------------------------------------------------------------------- SQLite


def _split(script: str) -> list[str]:
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    if current.strip():
        statements.append(current)
    return statements


def _sqlite_applied(conn: sqlite3.Connection) -> dict[int, str]:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if row is None:
        return {}
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(v): str(c) for v, c in rows}


def check_sqlite(conn: sqlite3.Connection) -> MigrationStatus:
    """Report applied and pending migrations; raise :class:`MigrationError` on tampering."""
    return _status(load_migrations("sqlite"), _sqlite_applied(conn))


def migrate_sqlite(conn: sqlite3.Connection) -> tuple[int, ...]:
    """Apply pending migrations in order, each in its own transaction; returns their versions.

    ``conn`` must be in autocommit mode (``isolation_level=None``): the runner issues
    ``BEGIN IMMEDIATE``/``COMMIT`` itself, because ``executescript`` would commit midway.
    """
    if conn.in_transaction:
        msg = "migrate_sqlite needs a connection outside any transaction (isolation_level=None)"
        raise MigrationError(msg)
    done: list[int] = []
    for migration in load_migrations("sqlite"):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SQLITE_TABLE)
            status = _status(load_migrations("sqlite"), _sqlite_applied(conn))
            if migration.version not in status.applied:
                for statement in _split(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at, checksum)"
                    " VALUES (?, ?, ?)",
                    (migration.version, datetime.now(UTC).isoformat(), migration.checksum),
                )
                done.append(migration.version)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return tuple(done)
