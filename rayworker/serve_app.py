"""The Ray Serve health app and the probes behind it (an adapter: grading lives in
:mod:`rayworker.health`).

Routes (all ``GET``)::

    /healthz              liveness: 200 {"status": "OK"} while the replica runs
    /readyz               every component (HealthReport JSON); 200 OK/WARNING, 503 CRITICAL
    /health/{component}   one component; 404 {"error": "Component not found", ...} if unknown
    /metrics              Prometheus text 0.0.4: overall and per-tenant counters, latency
                          histograms, health, router/shard/consumer-lag gauges
                          (:mod:`rayworker.telemetry.exposition`)

Components (only those the settings use are checked)::

    router      the named actor ``rayworker-router``: its own ``health()`` answer
    shards      the shards the router reports (worst of them)
    redis       PING on metrics_url (redis metrics) and stream_url (redis source)
    postgres    SELECT 1 through asyncpg          (alerts_dsn postgresql://...)
    sqlite      SELECT 1 on the file, read-only   (alerts_dsn sqlite:///...)
    lag         XINFO GROUPS: lag + pending of the consumer group (redis source)
    dead_letters          the event dead-letter stream: WARNING while its newest record is
                          recent (redis source)
    failed_notifications  the notifier's dead letters, graded the same way (notify_path)
    processing  error rate and p99 from the metrics store (or the ``rayworker-metrics`` actor)

:func:`build_probes` and :func:`collect` work without Serve (``rayworker check``): in a
process not connected to Ray the Ray-backed components report "not connected to Ray"
(CRITICAL for router and shards, WARNING for processing) instead of raising.

Secrets: the deployment receives the :class:`~rayworker.settings.Settings` object itself
(pickled by Ray, so the :class:`~pydantic.SecretStr` DSNs survive intact and are never turned
into plain text outside the connect calls). Failure messages are scrubbed of every DSN and
password before they reach a response.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import asyncpg
import ray
import redis.asyncio as aioredis
from opentelemetry.trace import SpanKind
from pydantic.warnings import PydanticDeprecatedSince20
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from rayworker.health import (
    PROMETHEUS_CONTENT_TYPE,
    ComponentHealth,
    HealthReport,
    Probe,
    ProbeError,
    Status,
    check_all,
    grade_dead_letters,
    grade_lag,
    grade_latency,
    processing_health,
    render_prometheus,
    run_probe,
    snapshot_from_json,
    worst,
)
from rayworker.notify.config import DeadLetterConfig, load_notify_config
from rayworker.notify.failed import failed_store
from rayworker.notify.receivers import scrub
from rayworker.pipeline.runtime import connect_ray
from rayworker.settings import Settings, redact_dsn
from rayworker.sinks.factory import metrics_store, sqlite_path
from rayworker.sinks.metrics_store import MetricsSnapshot, MetricsStore
from rayworker.telemetry.exposition import render_pipeline
from rayworker.telemetry.propagation import context_of
from rayworker.telemetry.setup import setup_process
from rayworker.telemetry.spans import tracer

with warnings.catch_warnings():
    # Ray 2.60's Serve config passes Field(update_type=...), which pydantic 2 deprecates at
    # import time; silence exactly that so `-W error` (and pytest) can import this module.
    warnings.filterwarnings(
        "ignore",
        message="Using extra keyword arguments on .Field. is deprecated",
        category=PydanticDeprecatedSince20,
    )
    from ray import serve

__all__ = [
    "APP_NAME",
    "METRICS_ACTOR",
    "ROUTER_ACTOR",
    "HealthApp",
    "HealthEndpoints",
    "build_probes",
    "collect",
    "deploy",
    "fetch_snapshot",
    "metrics_text",
    "probe_alerts_db",
    "probe_lag",
    "probe_processing",
    "probe_redis",
    "probe_router",
    "probe_shards",
    "shutdown",
]

APP_NAME: Final = "rayworker-health"
"""The Serve application name of the health app."""
ROUTER_ACTOR: Final = "rayworker-router"
"""The named router actor (``async health() -> dict``)."""
METRICS_ACTOR: Final = "rayworker-metrics"
"""The named in-memory metrics actor (``async snapshot(tenant) -> dict``)."""

_NOT_CONNECTED: Final = "not connected to Ray"
_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})


def _route(path: str) -> str:
    """The route a path matched, for span names (a path's variable part stays out)."""
    if path in _ROUTES:
        return path
    return "/health/{component}" if path.startswith("/health/") else "(unmatched)"


# --------------------------------------------------------------------------- secrets


def _secrets(settings: Settings) -> list[tuple[str, str]]:
    """(text to hide, replacement) for every DSN and password in the settings."""
    pairs: list[tuple[str, str]] = []
    for secret in (settings.alerts_dsn, settings.metrics_url, settings.stream_url):
        dsn = secret.get_secret_value()
        password = urlsplit(dsn).password
        if password is not None:
            pairs.append((dsn, redact_dsn(dsn)))
            pairs.append((password, "***"))
    return pairs


def _scrubbed(settings: Settings, exc: BaseException) -> ProbeError:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for hidden, shown in _secrets(settings):
        text = text.replace(hidden, shown)
    return ProbeError(text)


# --------------------------------------------------------------------------- Ray actors


async def _actor(name: str, namespace: str) -> Any | None:
    """The named actor's handle, or None when it does not exist."""
    try:
        # get_actor is a blocking GCS call; keep it off the event loop so timeouts apply.
        return await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
    except ValueError:
        return None


async def _router_health(settings: Settings) -> dict[str, Any] | ComponentHealth:
    """The router's ``health()`` dict, or a CRITICAL answer when it cannot be asked."""
    if not ray.is_initialized():
        return ComponentHealth("router", Status.CRITICAL, _NOT_CONNECTED)
    router = await _actor(ROUTER_ACTOR, settings.ray_namespace)
    if router is None:
        return ComponentHealth(
            "router",
            Status.CRITICAL,
            "router not running",
            {"actor": ROUTER_ACTOR, "namespace": settings.ray_namespace},
        )
    async with asyncio.timeout(settings.health.check_timeout_s):
        answer = await router.health.remote()
    if not isinstance(answer, Mapping):
        msg = f"router health() returned {type(answer).__name__}, expected a dict"
        raise ProbeError(msg)
    return dict(answer)


def _status(value: object) -> Status:
    try:
        return Status(str(value))
    except ValueError:
        return Status.WARNING


async def probe_router(settings: Settings) -> ComponentHealth:
    """The router actor's own status and message."""
    answer = await _router_health(settings)
    if isinstance(answer, ComponentHealth):
        return answer
    detail = {k: v for k, v in answer.items() if k not in {"status", "message", "shards"}}
    message = str(answer.get("message") or "router running")
    return ComponentHealth("router", _status(answer.get("status")), message, detail)


async def probe_shards(settings: Settings) -> ComponentHealth:
    """The worst shard the router reports; CRITICAL when it reports none."""
    answer = await _router_health(settings)
    if isinstance(answer, ComponentHealth):
        return ComponentHealth("shards", Status.CRITICAL, answer.message, answer.detail)
    shards = answer.get("shards") or {}
    if not isinstance(shards, Mapping) or not shards:
        return ComponentHealth("shards", Status.CRITICAL, "router reports no shards")
    statuses = {
        str(name): _status(s.get("status") if isinstance(s, Mapping) else None)
        for name, s in shards.items()
    }
    counts = {st: sum(1 for v in statuses.values() if v is st) for st in Status}
    summary = ", ".join(f"{n} {st}" for st, n in counts.items() if n)
    bad = sorted(name for name, st in statuses.items() if st is not Status.OK)
    message = f"{len(statuses)} shards: {summary}" + (f" ({', '.join(bad)})" if bad else "")
    detail = {
        str(name): {
            "status": str(statuses[str(name)]),
            "message": str(s.get("message", "")) if isinstance(s, Mapping) else "",
        }
        for name, s in shards.items()
    }
    return ComponentHealth("shards", worst(statuses.values()), message, detail)


# --------------------------------------------------------------------------- Redis


def _redis(url: str, timeout_s: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)


async def _ping(url: str, timeout_s: float) -> None:
    client = _redis(url, timeout_s)
    try:
        await client.ping()
    finally:
        await client.aclose()


def _redis_targets(settings: Settings) -> dict[str, str]:
    """role -> URL of the Redis servers the settings use (one PING per distinct URL)."""
    targets: dict[str, str] = {}
    if settings.metrics_backend == "redis":
        targets["metrics"] = settings.metrics_url.get_secret_value()
    if settings.source == "redis":
        targets["stream"] = settings.stream_url.get_secret_value()
    return targets


async def probe_redis(settings: Settings) -> ComponentHealth:
    """PING every Redis the settings use; graded by the slowest round trip."""
    timeout_s = settings.health.check_timeout_s
    by_url: dict[str, list[str]] = {}
    for role, url in _redis_targets(settings).items():
        by_url.setdefault(url, []).append(role)
    began = time.perf_counter()
    try:
        await asyncio.gather(*(_ping(url, timeout_s) for url in by_url))
    except Exception as exc:  # noqa: BLE001 - re-raised, scrubbed of secrets
        raise _scrubbed(settings, exc) from None
    elapsed_ms = (time.perf_counter() - began) * 1000.0
    roles = sorted(role for roles in by_url.values() for role in roles)
    detail = {role: redact_dsn(url) for url, rs in by_url.items() for role in rs}
    return ComponentHealth(
        "redis",
        grade_latency(elapsed_ms, settings.health),
        f"PING answered ({', '.join(roles)}) in {elapsed_ms:,.0f} ms",
        detail,
    )


async def probe_lag(settings: Settings) -> ComponentHealth:
    """Entries of ``stream_key`` not yet acknowledged by ``consumer_group`` (lag + pending)."""
    client = _redis(settings.stream_url.get_secret_value(), settings.health.check_timeout_s)
    key, group = settings.stream_key, settings.consumer_group
    try:
        groups = await client.xinfo_groups(key)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return ComponentHealth(
                "lag", Status.WARNING, f"stream {key!r} does not exist yet", {"stream": key}
            )
        raise _scrubbed(settings, exc) from None
    except Exception as exc:  # noqa: BLE001 - re-raised, scrubbed of secrets
        raise _scrubbed(settings, exc) from None
    finally:
        await client.aclose()
    for info in groups:
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) != group:
            continue
        pending = int(info.get("pending") or 0)
        lag = info.get("lag")
        total = pending + int(lag or 0)
        detail = {"stream": key, "group": group, "pending": pending, "lag": lag}
        message = f"{total:,} entries behind ({pending:,} pending"
        message += ", lag unknown)" if lag is None else f", {int(lag):,} undelivered)"
        status = grade_lag(total, settings.health)
        if lag is None:
            status = max(status, Status.WARNING)
        return ComponentHealth("lag", status, message, detail)
    return ComponentHealth(
        "lag",
        Status.WARNING,
        f"consumer group {group!r} not created on {key!r} yet",
        {"stream": key, "group": group},
    )


async def probe_dead_letters(settings: Settings) -> ComponentHealth:
    """The dead-letter stream: how many records it holds and how recent the newest is."""
    client = _redis(settings.stream_url.get_secret_value(), settings.health.check_timeout_s)
    key = settings.dead_letter_stream
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xlen(key)
        pipe.xrevrange(key, "+", "-", count=1)
        length, newest = await pipe.execute()
    except Exception as exc:  # noqa: BLE001 - re-raised, scrubbed of secrets
        raise _scrubbed(settings, exc) from None
    finally:
        await client.aclose()
    detail: dict[str, Any] = {"stream": key, "length": int(length)}
    if not newest:
        return ComponentHealth("dead_letters", Status.OK, f"no dead letters in {key!r}", detail)
    record_id, fields = newest[0]
    rid = record_id.decode() if isinstance(record_id, bytes) else str(record_id)
    # A stream id starts with the milliseconds at which Redis added the record.
    age_s = max(0.0, time.time() - int(rid.partition("-")[0]) / 1000.0)
    reason = fields.get(b"reason", b"").decode("utf-8", "replace")
    tenant = fields.get(b"tenant", b"").decode("utf-8", "replace")
    detail.update(newest_id=rid, newest_age_s=round(age_s, 1), newest_reason=reason)
    status = grade_dead_letters(age_s, settings.health)
    held = f"{int(length):,} dead letter{'' if int(length) == 1 else 's'}"
    who = f", tenant {tenant}" if tenant else ""
    message = _held_message(settings, status, held, age_s, f" ({reason}{who})", "dead-letters")
    return ComponentHealth("dead_letters", status, message, detail)


def _held_message(
    settings: Settings, status: Status, held: str, age_s: float, about: str, command: str
) -> str:
    """A dead-letter store's health message: OK says nothing arrived lately; otherwise how long
    ago the newest arrived, what it was (``about``), and the command that shows them."""
    if status is Status.OK:
        return f"{held}, none in the last {settings.health.dead_letter_recent_s:g} s"
    return f"{held}, the newest {age_s:,.0f} s ago{about}; see `rayworker {command} stats`"


async def probe_failed_notifications(
    settings: Settings, config: DeadLetterConfig
) -> ComponentHealth:
    """The notifier's dead letters: how many it holds and how recent the newest is."""
    store = failed_store(config)
    try:
        found = await store.summary()
    except Exception as exc:  # noqa: BLE001 - re-raised, scrubbed of the store's URL
        hidden = [config.redis_url.get_secret_value()] if config.redis_url is not None else []
        raise ProbeError(scrub(f"{type(exc).__name__}: {exc}", hidden)) from None
    finally:
        await store.close()
    detail: dict[str, Any] = {"store": store.where, "length": found.count}
    held = f"{found.count:,} failed notification{'' if found.count == 1 else 's'}"
    if found.newest_at is None:
        return ComponentHealth(
            "failed_notifications", Status.OK, f"no failed notifications in {store.where}", detail
        )
    age_s = max(0.0, time.time() - found.newest_at)
    detail["newest_age_s"] = round(age_s, 1)
    status = grade_dead_letters(age_s, settings.health)
    newest = found.newest
    if newest is not None:
        detail.update(
            newest_reason=newest.reason,
            newest_tenant=newest.tenant,
            newest_receiver=newest.receiver,
            newest_redrive_failures=newest.redrive_failures,
        )
    about = ""
    if newest is not None:
        again = newest.redrive_failures
        redriven = f", {again:,} re-drive{'' if again == 1 else 's'} failed" if again else ""
        about = f" ({newest.reason}, tenant {newest.tenant}, receiver {newest.receiver}{redriven})"
    message = _held_message(settings, status, held, age_s, about, "failed-notifications")
    return ComponentHealth("failed_notifications", status, message, detail)


# --------------------------------------------------------------------------- alerts database


def _alerts_component(settings: Settings) -> str:
    """``postgres`` or ``sqlite``: the component name of the alert database."""
    return "postgres" if settings.alerts_backend == "postgresql" else settings.alerts_backend


def _sqlite_select_1(path: str) -> None:
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        conn.execute("SELECT 1").fetchone()
    finally:
        conn.close()


async def probe_alerts_db(settings: Settings) -> ComponentHealth:
    """SELECT 1 on the alert database (PostgreSQL through asyncpg, or SQLite read-only)."""
    backend = settings.alerts_backend
    name = _alerts_component(settings)
    dsn = settings.alerts_dsn.get_secret_value()
    began = time.perf_counter()
    try:
        if backend == "postgresql":
            conn = await asyncpg.connect(dsn, timeout=settings.health.check_timeout_s)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
            where = redact_dsn(dsn)
        else:
            path = sqlite_path(dsn)
            if path == ":memory:":
                return ComponentHealth(
                    name, Status.WARNING, "alerts in a private in-memory database"
                )
            await asyncio.to_thread(_sqlite_select_1, path)
            where = path
    except Exception as exc:  # noqa: BLE001 - re-raised, scrubbed of secrets
        raise _scrubbed(settings, exc) from None
    elapsed_ms = (time.perf_counter() - began) * 1000.0
    return ComponentHealth(
        name,
        grade_latency(elapsed_ms, settings.health),
        f"SELECT 1 answered in {elapsed_ms:,.0f} ms",
        {"database": where},
    )


# --------------------------------------------------------------------------- processing


_T = TypeVar("_T")


async def _read_metrics(
    settings: Settings,
    from_store: Callable[[MetricsStore], Awaitable[_T]],
    from_actor: Callable[[Any], Awaitable[_T]],
) -> _T | str:
    """Read the Redis metrics store, or the in-memory metrics actor; a string says why
    neither can answer (memory metrics outside Ray, no actor)."""
    if settings.metrics_backend == "redis":
        store = metrics_store(settings)
        try:
            return await from_store(store)
        except Exception as exc:  # noqa: BLE001 - re-raised, scrubbed of secrets
            raise _scrubbed(settings, exc) from None
        finally:
            await store.close()
    if not ray.is_initialized():
        return _NOT_CONNECTED
    actor = await _actor(METRICS_ACTOR, settings.ray_namespace)
    if actor is None:
        return "metrics not available"
    async with asyncio.timeout(settings.health.check_timeout_s):
        return await from_actor(actor)


async def fetch_snapshot(settings: Settings, tenant: str | None = None) -> MetricsSnapshot | str:
    """The metrics snapshot, or why there is none (memory metrics outside Ray, no actor)."""

    async def from_actor(actor: Any) -> MetricsSnapshot:
        return snapshot_from_json(await actor.snapshot.remote(tenant))

    return await _read_metrics(settings, lambda store: store.snapshot(tenant), from_actor)


async def fetch_snapshots(settings: Settings) -> dict[str | None, MetricsSnapshot] | str:
    """Overall (None) and per-tenant snapshots, or why there are none."""

    async def from_actor(actor: Any) -> dict[str | None, MetricsSnapshot]:
        pairs = await actor.snapshots.remote()
        return {scope: snapshot_from_json(data) for scope, data in pairs}

    return await _read_metrics(settings, lambda store: store.snapshots(), from_actor)


async def probe_processing(settings: Settings) -> ComponentHealth:
    """Error rate and p99 latency of everything processed so far (WARNING if unknown)."""
    snapshot = await fetch_snapshot(settings)
    if isinstance(snapshot, str):
        return ComponentHealth("processing", Status.WARNING, snapshot)
    return processing_health(snapshot, settings.health)


# --------------------------------------------------------------------------- assembly


def build_probes(settings: Settings) -> dict[str, Probe]:
    """The probes of every component ``settings`` use, by component name."""
    probes: dict[str, Probe] = {
        "router": functools.partial(probe_router, settings),
        "shards": functools.partial(probe_shards, settings),
    }
    if _redis_targets(settings):
        probes["redis"] = functools.partial(probe_redis, settings)
    probes[_alerts_component(settings)] = functools.partial(probe_alerts_db, settings)
    if settings.source == "redis":
        probes["lag"] = functools.partial(probe_lag, settings)
        probes["dead_letters"] = functools.partial(probe_dead_letters, settings)
    if settings.notify_path is not None:
        dead = load_notify_config(settings.notify_path).dead_letter
        probes["failed_notifications"] = functools.partial(
            probe_failed_notifications, settings, dead
        )
    probes["processing"] = functools.partial(probe_processing, settings)
    return probes


async def collect(
    settings: Settings, *, attempts: int = 3, retry_delay_s: float = 1.0
) -> HealthReport:
    """Check every component once (with retries); usable without Serve or a Ray driver."""
    return await check_all(
        build_probes(settings),
        timeout_s=settings.health.check_timeout_s,
        attempts=attempts,
        retry_delay_s=retry_delay_s,
    )


async def metrics_text(settings: Settings, report: HealthReport | None) -> str:
    """The Prometheus exposition: overall and per-tenant metrics (when available) and the
    health gauges."""
    try:
        found = await fetch_snapshots(settings)
    except (ProbeError, TimeoutError):
        found = "metrics store unreachable"
    snapshots = {} if isinstance(found, str) else found
    text = render_prometheus(report, snapshots, prefix=settings.metrics_prefix)
    return text + render_pipeline(report, prefix=settings.metrics_prefix)


# --------------------------------------------------------------------------- HTTP


class HealthEndpoints:
    """The HTTP routes; a plain class so it also runs outside Serve. ``HealthApp`` deploys it."""

    def __init__(
        self, settings: Settings, *, attempts: int = 3, retry_delay_s: float = 1.0
    ) -> None:
        self._settings = settings
        self._attempts = attempts
        self._retry_delay_s = retry_delay_s
        self._probes = build_probes(settings)
        self._tracing = setup_process(settings.telemetry, component="serve")

    async def __call__(self, request: Request) -> Response:
        """Route one request (Serve calls this for every HTTP request to the app)."""
        if not self._tracing:
            return await self._handle(request)
        path = request.url.path.rstrip("/") or "/"
        with tracer().start_as_current_span(
            f"{request.method} {_route(path)}",
            context=context_of(dict(request.headers)),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": path},
        ) as span:
            response = await self._handle(request)
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    async def _handle(self, request: Request) -> Response:
        if request.method not in {"GET", "HEAD"}:
            return JSONResponse({"error": "Method not allowed"}, status_code=405)
        path = request.url.path.rstrip("/") or "/"
        try:
            if path == "/healthz":
                return JSONResponse({"status": str(Status.OK)})
            if path == "/readyz":
                report = await self._report()
                return JSONResponse(report.to_json(), status_code=report.http_status)
            if path == "/metrics":
                text = await metrics_text(self._settings, await self._report())
                return PlainTextResponse(text, media_type=PROMETHEUS_CONTENT_TYPE)
            if path.startswith("/health/"):
                return await self._component(path.removeprefix("/health/"))
        except Exception as exc:  # noqa: BLE001 - a broken check answers 500, never crashes
            body = {"status": str(Status.CRITICAL), "error": type(exc).__name__}
            return JSONResponse(body, status_code=500)
        return JSONResponse({"error": "Not found", "path": path}, status_code=404)

    async def _report(self) -> HealthReport:
        return await check_all(
            self._probes,
            timeout_s=self._settings.health.check_timeout_s,
            attempts=self._attempts,
            retry_delay_s=self._retry_delay_s,
        )

    async def _component(self, name: str) -> Response:
        probe = self._probes.get(name)
        if probe is None:
            body = {"error": "Component not found", "component": name}
            return JSONResponse(body, status_code=404)
        result = await run_probe(
            name,
            probe,
            timeout_s=self._settings.health.check_timeout_s,
            attempts=self._attempts,
            retry_delay_s=self._retry_delay_s,
        )
        code = 503 if result.status is Status.CRITICAL else 200
        return JSONResponse({"component": name, **result.to_json()}, status_code=code)


HealthApp = serve.deployment(name="HealthApp", num_replicas=1, ray_actor_options={"num_cpus": 0})(
    HealthEndpoints
)
"""The Serve deployment of :class:`HealthEndpoints`; bind it with a :class:`Settings`."""


def deploy(settings: Settings, *, attempts: int = 3, retry_delay_s: float = 1.0) -> None:
    """Start Serve on ``serve_host:serve_port`` and run the health app at ``/``.

    Connects to Ray first (``ray_address``, ``ray_namespace``) unless already connected.
    Serve's HTTP options are cluster-wide and fixed once Serve runs: to move the port, call
    :func:`shutdown` first.
    """
    connect_ray(settings.ray_address, namespace=settings.ray_namespace)
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})
    app = HealthApp.bind(settings, attempts=attempts, retry_delay_s=retry_delay_s)
    serve.run(app, name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    """Shut Serve down on the cluster (every Serve app, not only this one)."""
    serve.shutdown()  # type: ignore[no-untyped-call]  # ray leaves shutdown() unannotated
