"""Build the alert and metrics stores that :class:`~rayworker.settings.Settings` name.

``alerts_dsn``: ``postgresql://...`` (production) or ``sqlite:///path`` (the embedded default;
``sqlite:///:memory:`` for a private in-process database). ``metrics_url``: ``redis://...`` or
``memory://`` (the embedded default). Stores come back unopened for alerts (call ``open``) and
ready for metrics, mirroring their own constructors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from rayworker.errors import ConfigError
from rayworker.sinks.memory_metrics import MemoryMetricsStore
from rayworker.sinks.sqlite_alerts import SqliteAlertStore

if TYPE_CHECKING:
    from rayworker.clock import Clock
    from rayworker.settings import Settings
    from rayworker.sinks.alert_store import AlertStore
    from rayworker.sinks.metrics_store import MetricsStore
    from rayworker.sinks.postgres_alerts import PostgresAlertStore

__all__ = ["alert_store", "metrics_store", "open_alert_store", "sqlite_path"]


def sqlite_path(dsn: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` DSN (or ``:memory:``)."""
    parts = urlsplit(dsn)
    path = unquote(parts.path)
    if parts.netloc:
        msg = f"sqlite DSN {dsn!r} has a host; write sqlite:///relative/path or sqlite:////abs"
        raise ConfigError(msg)
    path = path[1:] if path.startswith("/") else path
    if not path:
        msg = "sqlite DSN has no path; write e.g. sqlite:///rayworker-alerts.db"
        raise ConfigError(msg)
    return path


def alert_store(
    settings: Settings, *, clock: Clock | None = None, pool_size: int = 4
) -> SqliteAlertStore | PostgresAlertStore:
    """The unopened alert store ``settings.alerts_dsn`` names."""
    dsn = settings.alerts_dsn.get_secret_value()
    backend = settings.alerts_backend
    if backend == "sqlite":
        return SqliteAlertStore(sqlite_path(dsn), clock=clock)
    if backend == "postgresql":
        from rayworker.sinks.postgres_alerts import PostgresAlertStore  # noqa: PLC0415 - optional

        return PostgresAlertStore(settings.alerts_dsn, max_size=pool_size, clock=clock)
    msg = (
        f"alerts_dsn backend {backend!r} cannot be shared between processes; use "
        "postgresql://... or sqlite:///path (fix RAYWORKER_ALERTS_DSN)"
    )
    raise ConfigError(msg)


async def open_alert_store(
    settings: Settings, *, migrate: bool = False, clock: Clock | None = None
) -> AlertStore:
    """The alert store, open; ``migrate`` applies pending migrations first."""
    store = alert_store(settings, clock=clock)
    await store.open(migrate=migrate)
    return store


def metrics_store(settings: Settings, *, clock: Clock | None = None) -> MetricsStore:
    """The metrics store ``settings.metrics_url`` names (in memory: this process only)."""
    if settings.metrics_backend == "memory":
        return MemoryMetricsStore(series_ttl_s=settings.metrics_series_ttl_s, clock=clock)
    from rayworker.sinks.redis_metrics import RedisMetricsStore  # noqa: PLC0415 - optional

    return RedisMetricsStore(
        settings.metrics_url,
        prefix=settings.metrics_prefix,
        series_ttl_s=settings.metrics_series_ttl_s,
    )
