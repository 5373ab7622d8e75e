"""The Redis metrics store (``redis.asyncio``).

Key layout (``{p}`` is the prefix, ``{s}`` the scope: ``all`` for the overall totals or
``t:{tenant}`` with the tenant id percent-encoded)::

    {p}:m:{s}                      hash of lifetime counters: events, rejected, late, alerts,
                                   alert_updates, naive_timestamps, duplicates, state_capped,
                                   integrity_violations, errors, rejected:{reason},
                                   alerts:rule:{rule}, alerts:sev:{severity},
                                   errors:{kind}                              (HINCRBY)
    {p}:lat:{s}                    hash of latency bucket counts le:1 .. le:+Inf (HINCRBY)
                                   and sum (HINCRBYFLOAT), in ms
    {p}:s:{name}:{s}:{YYYYmmddHHMM} per-minute series counter (UTC)    INCRBY + EXPIRE ttl

Tenant ids are percent-encoded (``urllib.parse.quote(tenant, safe="")``) before they go into
a key. The encoding is injective and leaves only ``A-Z a-z 0-9 _ . - ~`` and ``%XX``, so a
tenant named ``a:b``, ``*``, ``org:*`` or ``{x}`` can neither collide with another tenant's
keys, nor with the ``all`` scope (tenant scopes start with ``t:``), nor act as a glob pattern
or a Redis Cluster hash tag.

Every :meth:`~RedisMetricsStore.record` sends all its writes in ONE pipeline
(``transaction=False``): one round trip per batch. Lifetime counters carry no TTL; series keys
expire ``series_ttl_s`` after their last write. Reads touch known keys only (HGETALL, MGET);
the store never uses KEYS or SCAN.

The URL is a :class:`pydantic.SecretStr` and never appears in reprs, logs or error messages.
One store owns one connection pool; create one per process and :meth:`close` it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Self
from urllib.parse import quote

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.exceptions import RedisError

from rayworker.detect import MetricDeltas
from rayworker.errors import ConfigError, SinkError
from rayworker.sinks.histogram import BUCKET_LABELS, SUM_FIELD
from rayworker.sinks.metrics_store import (
    LatencyInput,
    MetricsSnapshot,
    WritePlan,
    check_series_name,
    minutes,
    plan_error,
    plan_record,
    snapshot_from_fields,
)

__all__ = ["RedisMetricsStore", "scope_token"]

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+(?::[A-Za-z0-9_.\-]+)*")
_MINUTE_FORMAT: Final = "%Y%m%d%H%M"


def scope_token(tenant: str | None) -> str:
    """The key segment of a tenant (percent-encoded, ``t:`` prefixed) or ``all`` for None."""
    return "all" if tenant is None else "t:" + quote(tenant, safe="")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisMetricsStore:
    """A :class:`~rayworker.sinks.metrics_store.MetricsStore` in Redis.

    ``client``: an existing ``redis.asyncio.Redis`` to use instead of building one from
    ``url`` (tests inject one to count round trips). An injected client belongs to the
    caller: :meth:`close` leaves it open.
    """

    def __init__(
        self,
        url: SecretStr | str,
        *,
        prefix: str = "rayworker",
        series_ttl_s: int = 86400 * 2,
        socket_timeout_s: float = 5.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        if not (len(prefix) <= 100 and _PREFIX_RE.fullmatch(prefix)):
            msg = (
                f'Got "{prefix}" for prefix. Use 1-100 characters from A-Z a-z 0-9 _ . - in'
                ' segments separated by ":" (no glob or brace characters).'
            )
            raise ConfigError(msg)
        if not 60 <= series_ttl_s <= 366 * 86400:
            msg = f"Got {series_ttl_s} for series_ttl_s. Use 60..31622400 seconds."
            raise ConfigError(msg)
        if not 0 < socket_timeout_s <= 600:
            msg = f"Got {socket_timeout_s} for socket_timeout_s. Use (0, 600] seconds."
            raise ConfigError(msg)
        self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        self._prefix = prefix
        self._ttl = series_ttl_s
        self._owns_client = client is None
        if client is None:
            try:
                client = aioredis.Redis.from_url(
                    self._url.get_secret_value(),
                    decode_responses=True,
                    socket_timeout=socket_timeout_s,
                    socket_connect_timeout=socket_timeout_s,
                )
            except ValueError:
                # The URL stays out of the message: it may hold a password.
                msg = (
                    "the Redis metrics URL is invalid; use redis://[:password@]host:port/db,"
                    " rediss://... or unix://..."
                )
                raise ConfigError(msg) from None
        self._client: aioredis.Redis = client

    def __repr__(self) -> str:
        return f"RedisMetricsStore(url=SecretStr('**********'), prefix={self._prefix!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (unless the client was injected)."""
        if self._owns_client:
            await self._client.aclose()

    # ----------------------------------------------------------------- keys

    @property
    def prefix(self) -> str:
        """The key prefix of this store."""
        return self._prefix

    def counters_key(self, tenant: str | None) -> str:
        """The hash of lifetime counters of a tenant (None: overall)."""
        return f"{self._prefix}:m:{scope_token(tenant)}"

    @property
    def tenants_key(self) -> str:
        """The set of tenants that have recorded metrics."""
        return f"{self._prefix}:tenants"

    def latency_key(self, tenant: str | None) -> str:
        """The hash of latency bucket counts of a tenant (None: overall)."""
        return f"{self._prefix}:lat:{scope_token(tenant)}"

    def series_key(self, name: str, tenant: str | None, minute: datetime) -> str:
        """The counter of one series minute (``minute`` in UTC)."""
        return f"{self._prefix}:s:{name}:{scope_token(tenant)}:{minute.strftime(_MINUTE_FORMAT)}"

    # ----------------------------------------------------------------- writes

    async def _write(self, plan: WritePlan) -> None:
        if not (plan.counters or plan.latency or plan.series):
            return
        pipe = self._client.pipeline(transaction=False)
        # The tenant set lets /metrics list tenants without a blocking KEYS scan.
        tenants = {s for s in (*plan.counters, *plan.latency) if s is not None}
        if tenants:
            pipe.sadd(self.tenants_key, *sorted(tenants))
        for scope, fields in plan.counters.items():
            key = self.counters_key(scope)
            for name, n in fields.items():
                pipe.hincrby(key, name, n)
        for scope, (counts, total) in plan.latency.items():
            key = self.latency_key(scope)
            for label, n in zip(BUCKET_LABELS, counts, strict=True):
                if n:
                    pipe.hincrby(key, label, n)
            pipe.hincrbyfloat(key, SUM_FIELD, total)
        for name, scope, n in plan.series_items():
            key = self.series_key(name, scope, plan.minute)
            pipe.incrby(key, n)
            pipe.expire(key, self._ttl)
        await self._execute(pipe, "record")

    async def _execute(self, pipe: Any, what: str) -> list[Any]:
        try:
            async with pipe:
                result: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            msg = (
                f"the Redis metrics store failed during {what} ({type(exc).__name__});"
                " check that Redis is up and reachable from this process"
            )
            raise SinkError(msg) from exc
        return result

    async def record(
        self, deltas: MetricDeltas, *, latencies_ms: LatencyInput = (), at: datetime
    ) -> None:
        """Add one batch's deltas (and latencies in ms) at ``at``: one pipeline, one trip."""
        await self._write(plan_record(deltas, latencies_ms, at))

    async def record_error(
        self, tenant: str | None, kind: str, at: datetime, *, count: int = 1
    ) -> None:
        """Count ``count`` processing errors of ``kind`` (tenant None: not attributable)."""
        await self._write(plan_error(tenant, kind, at, count))

    # ----------------------------------------------------------------- reads

    async def snapshot(self, tenant: str | None = None) -> MetricsSnapshot:
        """The lifetime totals of one tenant, or overall when ``tenant`` is None."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(self.counters_key(tenant))
        pipe.hgetall(self.latency_key(tenant))
        counters, latency = await self._execute(pipe, "snapshot")
        return snapshot_from_fields(tenant, _decoded(counters), _decoded(latency))

    async def snapshots(self) -> dict[str | None, MetricsSnapshot]:
        """Overall (key None) and every tenant that has recorded anything: two round trips."""
        pipe = self._client.pipeline(transaction=False)
        pipe.smembers(self.tenants_key)
        (members,) = await self._execute(pipe, "snapshots")
        scopes: list[str | None] = [None, *sorted(_text(m) for m in members)]
        pipe = self._client.pipeline(transaction=False)
        for scope in scopes:
            pipe.hgetall(self.counters_key(scope))
            pipe.hgetall(self.latency_key(scope))
        rows = await self._execute(pipe, "snapshots")
        return {
            scope: snapshot_from_fields(scope, _decoded(rows[2 * i]), _decoded(rows[2 * i + 1]))
            for i, scope in enumerate(scopes)
        }

    async def series(
        self, name: str, tenant: str | None, *, since: datetime, until: datetime
    ) -> list[tuple[datetime, int]]:
        """Per-minute counts of counter ``name`` for minutes overlapping ``[since, until)``."""
        check_series_name(name)
        buckets = minutes(since, until)
        if not buckets:
            return []
        pipe = self._client.pipeline(transaction=False)
        pipe.mget([self.series_key(name, tenant, m) for m in buckets])
        (values,) = await self._execute(pipe, "series")
        return [(m, int(v) if v is not None else 0) for m, v in zip(buckets, values, strict=True)]


def _decoded(fields: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}
