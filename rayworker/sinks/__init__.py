"""Alert persistence: the :class:`AlertStore` seam and its three implementations.

* :class:`MemoryAlertStore`: in memory; the reference semantics, for tests and notebooks.
* :class:`SqliteAlertStore`: the embedded default (one file, or ``":memory:"``).
* :class:`PostgresAlertStore`: production (asyncpg pool, one per process); imported lazily
  from :mod:`rayworker.sinks.postgres_alerts` so the embedded stores need no asyncpg.

Schema changes are versioned SQL files applied by :mod:`rayworker.sinks.migrate`.
"""

from __future__ import annotations

from rayworker.sinks.alert_store import (
    ACTIVE_STATUSES,
    SEVERITIES,
    STATUSES,
    Action,
    AlertNotFound,
    AlertStats,
    AlertStore,
    Cursor,
    LifecycleError,
    MigrationError,
    QueryError,
    Status,
    StoredAlert,
    Transition,
    TrendPoint,
    transition,
)
from rayworker.sinks.memory_alerts import MemoryAlertStore
from rayworker.sinks.migrate import MigrationStatus
from rayworker.sinks.sqlite_alerts import SqliteAlertStore

__all__ = [
    "ACTIVE_STATUSES",
    "SEVERITIES",
    "STATUSES",
    "Action",
    "AlertNotFound",
    "AlertStats",
    "AlertStore",
    "Cursor",
    "LifecycleError",
    "MemoryAlertStore",
    "MigrationError",
    "MigrationStatus",
    "QueryError",
    "SqliteAlertStore",
    "Status",
    "StoredAlert",
    "Transition",
    "TrendPoint",
    "transition",
]
