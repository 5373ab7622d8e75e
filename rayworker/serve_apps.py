"""Ray Serve application builders for a RayService or ``serve deploy`` config.

Import paths (each a builder taking the ``args`` mapping of its Serve application)::

    rayworker.serve_apps:health_app     /healthz /readyz /health/{component} /metrics
    rayworker.serve_apps:pipeline_app   the pipeline itself: shards, router, Redis Stream pump

Settings come from the ``RAYWORKER_*`` environment of the Ray pods (DSNs from Secrets), never
from the Serve config: ``args.settings`` may override plain settings (``shards``,
``ray_namespace``, ...) but refuses DSNs, so no secret is written into a manifest. Replicas load
their settings themselves, in the process that uses them: the Serve controller checkpoints a
deployment's constructor arguments in the GCS (and so in its fault-tolerance Redis), and those
arguments hold only the overrides. Builders also load the settings once, so a bad value fails
the deployment at once, naming the variable to fix.

The pipeline deployment is a singleton (its router and shards are named actors in
``ray_namespace``): keep ``num_replicas: 1``. Its constructor starts the pipeline in a
background task and returns, so the replica becomes healthy while the stores and actors come up;
``GET /`` (under the app's route prefix) and :meth:`PipelineRunner.status` report the state.
Replica shutdown stops reading, drains what is in flight and acknowledges it before the actors
stop; set the deployment's ``graceful_shutdown_timeout_s`` above the time a drain takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rayworker.errors import ConfigError
from rayworker.serve_app import ROUTER_ACTOR, HealthEndpoints
from rayworker.settings import Settings, load_settings

# serve_app imported ray.serve under the warning filter that Ray 2.60's pydantic use needs.
from ray import serve  # isort: skip

__all__ = [
    "HEALTH_APP",
    "PIPELINE_APP",
    "EnvHealthEndpoints",
    "HealthAppArgs",
    "HealthDeployment",
    "PipelineAppArgs",
    "PipelineDeployment",
    "PipelineRunner",
    "PipelineState",
    "health_app",
    "pipeline_app",
]

HEALTH_APP: Final = "rayworker.serve_apps:health_app"
"""The import path of the health application builder."""
PIPELINE_APP: Final = "rayworker.serve_apps:pipeline_app"
"""The import path of the pipeline application builder."""

_DSN_SETTINGS: Final = frozenset({"alerts_dsn", "metrics_url", "stream_url"})

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- arguments


class _AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="plain setting overrides (names as in Settings); DSNs come from Secrets",
    )

    @field_validator("settings")
    @classmethod
    def _plain_settings_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(value.keys() - Settings.model_fields.keys())
        if unknown:
            msg = f"{', '.join(unknown)}: not a setting; check the spelling (see Settings)"
            raise ValueError(msg)
        secret = _secret_paths(Settings, value)
        if secret:
            variable = "RAYWORKER_" + secret[0].replace(".", "__").upper()
            msg = (
                f"{', '.join(secret)} cannot be set in the Serve config (it would put a secret "
                f"in a manifest); set {variable} from a Secret instead"
            )
            raise ValueError(msg)
        return value


def _secret_paths(model: type[BaseModel], values: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the secret fields (SecretStr anywhere in the type) ``values`` sets."""
    found: list[str] = []
    for name, value in values.items():
        info = model.model_fields.get(name)
        if info is None:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if isinstance(value, dict):
                found += _secret_paths(annotation, value, f"{prefix}{name}.")
        elif "SecretStr" in repr(annotation):
            found.append(prefix + name)
    return sorted(found)


class HealthAppArgs(_AppArgs):
    """The ``args`` of :func:`health_app`."""

    attempts: int = Field(3, ge=1, le=10, description="tries per component check")
    retry_delay_s: float = Field(1.0, ge=0, le=60, description="pause between tries")


class PipelineAppArgs(_AppArgs):
    """The ``args`` of :func:`pipeline_app`."""

    migrate: bool = Field(
        default=False, description="apply pending alert-store migrations at start"
    )
    predecessor_wait_s: float = Field(
        120.0,
        ge=0,
        description="how long to wait for a replaced replica's pipeline to drain and stop",
    )


_Args = TypeVar("_Args", bound=_AppArgs)


def _parse(model: type[_Args], args: dict[str, Any], builder: str) -> _Args:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"args.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        msg = f"invalid Serve args for {builder}: {problems}"
        raise ConfigError(msg) from None


# --------------------------------------------------------------------------- health


class EnvHealthEndpoints(HealthEndpoints):
    """:class:`~rayworker.serve_app.HealthEndpoints` with settings read in the replica."""

    def __init__(
        self, overrides: dict[str, Any], *, attempts: int = 3, retry_delay_s: float = 1.0
    ) -> None:
        super().__init__(load_settings(**overrides), attempts=attempts, retry_delay_s=retry_delay_s)


HealthDeployment = serve.deployment(
    name="HealthApp", num_replicas=1, ray_actor_options={"num_cpus": 0}
)(EnvHealthEndpoints)
"""The Serve deployment of :class:`EnvHealthEndpoints`; bind it with setting overrides."""


def health_app(args: dict[str, Any]) -> serve.Application:
    """The health application: bind it at route prefix ``/`` (``/healthz``, ``/readyz``...)."""
    parsed = _parse(HealthAppArgs, args, HEALTH_APP)
    load_settings(**parsed.settings)
    return HealthDeployment.bind(
        dict(parsed.settings), attempts=parsed.attempts, retry_delay_s=parsed.retry_delay_s
    )


# --------------------------------------------------------------------------- pipeline


class PipelineState(StrEnum):
    """Where the pipeline of a replica is in its life."""

    STARTING = "starting"
    """Waiting for a predecessor to stop, checking the stores, starting actors."""
    RUNNING = "running"
    """Reading the stream and detecting."""
    DRAINING = "draining"
    """Asked to stop: finishing and acknowledging what is in flight."""
    STOPPED = "stopped"
    """Drained and stopped on request."""
    FAILED = "failed"
    """Start-up or the pump failed; ``error`` says why (Serve restarts the replica)."""


@dataclass(slots=True)
class _Progress:
    state: PipelineState = PipelineState.STARTING
    since: float = field(default_factory=time.time)
    error: str | None = None
    stats: Any = None
    address: str = ""

    def move(self, state: PipelineState, error: str | None = None) -> None:
        self.state = state
        self.since = time.time()
        self.error = error


class PipelineRunner:
    """Runs one rayworker pipeline inside a Serve replica, from start to drained stop.

    Must be constructed inside a running event loop (Serve does so): the pipeline starts in a
    background task. :meth:`check_health` fails once that task failed or ended on its own, so
    Serve replaces the replica; ``__del__`` (called by Serve at shutdown) drains it.
    """

    def __init__(
        self,
        overrides: dict[str, Any],
        *,
        migrate: bool = False,
        predecessor_wait_s: float = 120.0,
    ) -> None:
        self._settings = load_settings(**overrides)
        _require_stream(self._settings)
        self._migrate = migrate
        self._predecessor_wait_s = predecessor_wait_s
        self._stop = asyncio.Event()
        self._progress = _Progress()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rayworker-pipeline")

    # --- life ------------------------------------------------------------------------------

    async def _run(self) -> None:
        from rayworker.pipeline.app import Pipeline  # noqa: PLC0415 - Ray-side import

        pipeline: Pipeline | None = None
        try:
            await self._await_predecessor()
            if not self._stop.is_set():
                pipeline = Pipeline(self._settings, recoverable=True)
                await pipeline.start(migrate=self._migrate)
                self._progress.address = pipeline.address
            if pipeline is not None and not self._stop.is_set():
                self._progress.move(PipelineState.RUNNING)
                _log.info(
                    "pipeline running on %s: %d shards, stream %r, group %r",
                    pipeline.address,
                    len(pipeline.shards),
                    self._settings.stream_key,
                    self._settings.consumer_group,
                )
                self._progress.stats = await self._pump(pipeline)
            if self._stop.is_set():
                self._progress.move(PipelineState.STOPPED)
                _log.info("pipeline drained and stopped: %s", self.status())
            else:
                self._progress.move(PipelineState.FAILED, "the stream source ended on its own")
                _log.error("pipeline failed: the stream source ended on its own")
        except asyncio.CancelledError:
            self._progress.move(PipelineState.STOPPED, "cancelled before draining")
            raise
        except Exception as exc:  # noqa: BLE001 - reported by status() and check_health()
            self._progress.move(PipelineState.FAILED, self._describe(exc))
            # Not _log.exception: a traceback could quote a DSN; the message is scrubbed.
            _log.error("pipeline failed: %s", self._progress.error)
        finally:
            if pipeline is not None:
                pipeline.stop()

    async def _await_predecessor(self) -> None:
        """Wait while the pipeline of a replica being replaced still drains in the namespace."""
        deadline = time.monotonic() + self._predecessor_wait_s
        namespace = self._settings.ray_namespace
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                await asyncio.to_thread(ray.get_actor, ROUTER_ACTOR, namespace=namespace)
            except ValueError:
                return
            await asyncio.sleep(1.0)

    async def _pump(self, pipeline: Any) -> Any:
        from rayworker.ingest.redis_streams import StreamConsumer  # noqa: PLC0415
        from rayworker.pipeline.pump import consumer_lag  # noqa: PLC0415
        from rayworker.pipeline.sources import StreamBatches  # noqa: PLC0415

        consumer = StreamConsumer.from_settings(
            self._settings, replays_pending=pipeline.recoverable
        )
        try:
            await consumer.ensure_group()
            source = StreamBatches(
                consumer, self._stop, poison_attempts=self._settings.poison_attempts
            )
            return await pipeline.pump(
                source.__aiter__(),
                ack=source.ack,
                dead_letter=source.dead_letter,
                stop=self._stop,
                on_progress=self._on_progress,
                replay=source.replay,
                lag=consumer_lag(consumer),
            )
        finally:
            await consumer.close()

    def _on_progress(self, stats: Any) -> None:
        self._progress.stats = stats

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for name in sorted(_DSN_SETTINGS):
            dsn = getattr(self._settings, name).get_secret_value()
            password = urlsplit(dsn).password
            if password:
                text = text.replace(password, "***")
        return text

    async def drain(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop reading, wait until in-flight batches are acknowledged and the actors stop."""
        if not self._task.done():
            self._progress.move(PipelineState.DRAINING)
            self._stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        return self.status()

    def __del__(self) -> Coroutine[Any, Any, dict[str, Any]] | None:
        """At replica shutdown Serve calls this and awaits the drain it returns.

        Not ``async def``: garbage collection calls ``__del__`` too, and a pipeline that has
        already stopped (or never started) must then return nothing rather than a coroutine
        nobody awaits.
        """
        task = getattr(self, "_task", None)
        if task is None or task.done():
            return None
        return self.drain()

    # --- reporting -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The state, since when, the error if any, and the pump's counters."""
        progress = self._progress
        body: dict[str, Any] = {
            "state": str(progress.state),
            "since": progress.since,
            "error": progress.error,
            "ray_address": progress.address,
            "namespace": self._settings.ray_namespace,
            "shards": self._settings.shards,
            "stream": self._settings.stream_key,
            "consumer_group": self._settings.consumer_group,
        }
        stats = progress.stats
        if stats is not None:
            body.update(
                events=stats.events,
                accepted=stats.accepted,
                rejected=stats.rejected,
                late=stats.late,
                batches_acked=stats.acked,
                batches_failed=stats.failed,
                events_per_s=round(stats.rate, 1),
            )
        return body

    async def check_health(self) -> None:
        """Serve's replica health check: raise once the pipeline failed or ended on its own."""
        state = self._progress.state
        if state is PipelineState.FAILED or (self._task.done() and not self._stop.is_set()):
            msg = f"rayworker pipeline {state}: {self._progress.error or 'task ended'}"
            raise RuntimeError(msg)

    async def __call__(self, request: Request) -> Response:
        """``GET`` the status: 200 while running, 503 otherwise."""
        if request.method not in {"GET", "HEAD"}:
            return JSONResponse({"error": "Method not allowed"}, status_code=405)
        body = self.status()
        code = 200 if self._progress.state is PipelineState.RUNNING else 503
        return JSONResponse(body, status_code=code)


def _require_stream(settings: Settings) -> None:
    if settings.source != "redis":
        msg = (
            f"the pipeline app reads a Redis Stream, but RAYWORKER_SOURCE is "
            f"{settings.source!r}; set RAYWORKER_SOURCE=redis (files: `rayworker run --events`)"
        )
        raise ConfigError(msg)


PipelineDeployment = serve.deployment(
    name="Pipeline",
    num_replicas=1,
    max_ongoing_requests=16,
    graceful_shutdown_timeout_s=120,
    health_check_period_s=10,
    ray_actor_options={"num_cpus": 0},
)(PipelineRunner)
"""The Serve deployment of :class:`PipelineRunner`; bind it with setting overrides."""


def pipeline_app(args: dict[str, Any]) -> serve.Application:
    """The pipeline application (one replica): bind it at a prefix such as ``/pipeline``."""
    parsed = _parse(PipelineAppArgs, args, PIPELINE_APP)
    _require_stream(load_settings(**parsed.settings))
    return PipelineDeployment.bind(
        dict(parsed.settings),
        migrate=parsed.migrate,
        predecessor_wait_s=parsed.predecessor_wait_s,
    )
