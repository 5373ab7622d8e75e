"""Start, feed and stop the pipeline: the driver's side of ``rayworker run`` and ``demo``.

Start-up order is explicit and each step fails with a message saying what to fix:
settings -> alert store reachable and migrated -> metrics store -> shards -> router ->
source -> (Serve, started by the caller). :meth:`Pipeline.pump` feeds batches from a source
to the router, dead-letters what the router rejects, and acknowledges a source batch only
once the router reports it done (every alert it produced persisted). Stopping drains the
router first, so nothing in flight is lost.

Each process sets up its own telemetry (:func:`rayworker.telemetry.setup_process`): this
driver in :meth:`Pipeline.start`, the actors and sink workers when they start. With tracing
on, :meth:`Pipeline.pump` wraps each source batch in a ``rayworker.ingest`` span (continuing
the producers' trace, see :mod:`rayworker.telemetry.traced`) and each acknowledgement in a
``rayworker.ack`` span; :meth:`Pipeline.flush_telemetry` exports every process's spans before
:meth:`Pipeline.stop`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from opentelemetry.trace import SpanKind

from rayworker.alerts import PackedAlerts
from rayworker.autoscale import Autoscaler
from rayworker.balance import LoadBalancer
from rayworker.checkpoint import ROUTER_OWNER, decode_state
from rayworker.detect import DetectorConfig, MetricDeltas
from rayworker.errors import ConfigError, SinkError
from rayworker.notify.config import load_notify_config
from rayworker.pipeline.notifier import start_notifier
from rayworker.pipeline.pump import Ack, Batch, DeadLetter, Lag, Pump, PumpStats, Replay
from rayworker.pipeline.router import ROUTER_NAME, Receipt, start_router
from rayworker.pipeline.runtime import connect_ray
from rayworker.pipeline.shard import shard_actor, shard_name
from rayworker.pipeline.sinks import (
    METRICS_ACTOR,
    MetricsActor,
    flush_sink_telemetry,
    persist_alert_batches,
    persist_alerts,
    record_metrics,
)
from rayworker.routing import Assignment
from rayworker.rules import Overrides, RulePack, builtin_pack, load_overrides, load_rules
from rayworker.settings import Settings
from rayworker.shard_plan import read_assignment
from rayworker.sinks.factory import metrics_store, open_alert_store
from rayworker.telemetry.propagation import Carrier, carrier_of, context_of
from rayworker.telemetry.setup import flush_tracing, setup_process, tracing_enabled
from rayworker.telemetry.spans import links, tracer
from rayworker.telemetry.traced import choose_parent, event_ids, sampled_lines

__all__ = ["Batch", "Pipeline", "PumpStats", "detector_config", "load_pack"]

_log = logging.getLogger("rayworker.pipeline")
_NAME_WAIT_S = 10.0
_SINK_WORKERS = 2
"""Sink task workers started before the first event (each holds its own store)."""
_FLUSH_TIMEOUT_S = 10.0
_NOTIFY_DRAIN_S = 10.0
"""How long a stop waits for notifications still being delivered."""


def load_pack(settings: Settings) -> tuple[RulePack, Overrides | None]:
    """The rules and overrides the settings name (the built-in pack by default)."""
    pack = load_rules(settings.rules_path) if settings.rules_path else builtin_pack()
    overrides = load_overrides(settings.overrides_path, pack) if settings.overrides_path else None
    return pack, overrides


def detector_config(settings: Settings) -> DetectorConfig:
    """The detector settings of a pipeline."""
    return DetectorConfig(
        allowed_lateness_s=settings.lateness_s,
        suppression_s=settings.suppression_s,
        max_future_s=settings.max_future_s,
    )


class Pipeline:
    """The running actors of one rayworker deployment, driven from this process."""

    def __init__(self, settings: Settings, *, recoverable: bool = False) -> None:
        """``recoverable``: the source is a stream that can replay unacknowledged entries, so
        state is checkpointed (``checkpoint_interval_s``) and every actor restarts and
        recovers after a crash; see :mod:`rayworker.pipeline.router`."""
        self.settings = settings
        self.recoverable = recoverable and settings.checkpoint_interval_s > 0
        self.pack, self.overrides = load_pack(settings)
        self.config = detector_config(settings)
        self.assignment = (
            read_assignment(
                settings.assignment_path, shards=settings.shards, groups=settings.key_groups
            )
            if settings.assignment_path is not None
            else Assignment.balanced(settings.shards, groups=settings.key_groups)
        )
        self.shards: dict[int, Any] = {}
        self.router: Any = None
        self.metrics_actor: Any = None
        self.notifier: Any = None
        # Read now: a bad notification file fails before any actor starts.
        self.notify_config = (
            load_notify_config(settings.notify_path) if settings.notify_path is not None else None
        )
        if self.notify_config is not None and not self.notify_config.dead_letter.path.is_absolute():
            # Resolved here, where `rayworker failed-notifications` looks for it: the notifier
            # actor's working directory need not be this one.
            dead = self.notify_config.dead_letter
            self.notify_config = self.notify_config.model_copy(
                update={"dead_letter": dead.model_copy(update={"path": dead.path.resolve()})}
            )
        self.address = ""
        self.tracing = tracing_enabled(settings.telemetry)

    async def start(self, *, migrate: bool = False, fresh_state: bool = False) -> None:
        """Check the stores, then start the actors; raises with a fix on any failure.

        ``fresh_state``: delete this pipeline's checkpoints (by Ray namespace) first, so a
        recoverable pipeline starts from empty windows instead of resuming.
        """
        store: Any = await open_alert_store(self.settings, migrate=migrate)
        try:
            if fresh_state:
                await store.clear_checkpoints(self.settings.ray_namespace)
            elif self.recoverable:
                await self._resume_layout(store)
        finally:
            await store.close()
        metrics = metrics_store(self.settings)
        try:
            await metrics.snapshot(None)
        except SinkError as exc:
            msg = f"the metrics store is not reachable: {exc}; fix RAYWORKER_METRICS_URL"
            raise ConfigError(msg) from exc
        finally:
            await metrics.close()
        self.address = connect_ray(self.settings.ray_address, namespace=self.settings.ray_namespace)
        self.tracing = setup_process(
            self.settings.telemetry,
            component="driver",
            node=ray.get_runtime_context().get_node_id(),
        )
        self._refuse_if_running()
        ns = self.settings.ray_namespace
        if self.settings.metrics_backend == "memory":
            self.metrics_actor = (
                ray.remote(MetricsActor)
                .options(name=METRICS_ACTOR, namespace=ns, num_cpus=0)
                .remote(self.settings.metrics_series_ttl_s)
            )
        self.shards = {s: self._start_shard(s) for s in self.assignment.shards}
        await asyncio.gather(*(h.ping.remote() for h in self.shards.values()))
        if self.notify_config is not None:
            self.notifier = start_notifier(self.settings, self.notify_config)
            await self.notifier.ready.remote()
        self.router = start_router(
            self.settings,
            self.pack,
            self.config,
            self.assignment,
            self.shards,
            self.overrides,
            recoverable=self.recoverable,
        )
        await self.router.stats.remote()
        await self._warm_sinks()

    async def _resume_layout(self, store: Any) -> None:
        """Take the shard layout of the last checkpoint: a rescale may have changed it since
        these settings were written, and the checkpointed state is laid out by it."""
        found = await store.latest_checkpoint(self.settings.ray_namespace, ROUTER_OWNER)
        if found is None:
            return
        saved = Assignment.from_json(decode_state(found.state)["partitioner"]["assignment"])
        if saved.groups != self.assignment.groups:
            msg = (
                f"the last checkpoint of namespace {self.settings.ray_namespace!r} has "
                f"{saved.groups} key groups and the settings {self.assignment.groups}; the "
                "number never changes: set key_groups back, or start over with --fresh-state"
            )
            raise ConfigError(msg)
        if saved.owner != self.assignment.owner:
            _log.warning(
                "resuming with the checkpoint's layout of %d shards (settings: %d)",
                len(saved.shards),
                len(self.assignment.shards),
            )
        self.assignment = saved

    def _start_shard(self, shard: int) -> Any:
        poison = self.settings.fault_poison
        return shard_actor(
            shard,
            self.pack,
            self.overrides,
            self.config,
            num_cpus=self.settings.shard_cpus,
            namespace=self.settings.ray_namespace,
            telemetry=self.settings.telemetry,
            recoverable=self.recoverable,
            poison=poison.encode() if poison else None,
        )

    async def _start_new_shard(self, shard: int) -> Any:
        """Start shard ``shard``; its name may still be held for a moment by the shard of
        that id an earlier rescale stopped, until Ray has seen it die."""
        deadline = time.monotonic() + _NAME_WAIT_S
        while True:
            try:
                return self._start_shard(shard)
            except ValueError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def request_scale(self, shards: int) -> int:
        """Ask for ``shards`` shards; the running :meth:`pump` carries it out between two
        batches. Returns the request number (see :meth:`Router.scale_result`)."""
        request: int = await self.router.request_scale.remote(shards)
        return request

    async def rescale(self, shards: int, request: int | None = None) -> dict[str, Any]:
        """Change the number of detector shards to ``shards``, moving key groups and their
        state (:meth:`Router.rescale`); call it between batches (the pump does).

        New shards get the next free ids and start first; removing shards removes the
        highest ids, which the driver stops once the new layout is checkpointed. If new
        shards cannot start within ``recovery_timeout_s`` (no room in the cluster), nothing
        changes and the result says why. Raises if the hand-off itself fails: recover then.
        """
        groups = self.assignment.groups
        if shards < 1:
            msg = f"shards: got {shards}; give 1 to {groups} (the pipeline's key groups)"
            raise ConfigError(msg)
        # A shard without a key group would hold nothing: never more shards than groups.
        shards = min(shards, groups)
        current = sorted(self.shards)
        keep = current[:shards]
        added: dict[int, Any] = {}
        if shards > len(current):
            first = max(current) + 1
            try:
                for shard in range(first, first + shards - len(current)):
                    added[shard] = await self._start_new_shard(shard)
                await asyncio.wait_for(
                    asyncio.gather(*(h.ping.remote() for h in added.values())),
                    self.settings.recovery_timeout_s,
                )
            except (TimeoutError, ValueError, ray.exceptions.RayError) as exc:
                for handle in added.values():
                    ray.kill(handle)
                error = (
                    f"could not start {shards - len(current)} more shards within "
                    f"{self.settings.recovery_timeout_s:.0f} s ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); if the cluster has no room, add nodes or lower "
                    "shard_cpus, then ask again"
                )
                _log.warning(error)
                if request is not None:
                    await self.router.scale_failed.remote(request, error)
                return {"ok": False, "error": error}
        try:
            info: dict[str, Any] = await self.router.rescale.remote(added, keep, request)
        except ray.exceptions.RayError:
            for handle in added.values():
                ray.kill(handle)
            raise
        for shard in info["removed"]:
            ray.kill(self.shards.pop(shard))
        self.shards.update(added)
        self.assignment = Assignment.from_json(await self.router.assignment.remote())
        return info

    async def rebalance(self, assignment: Assignment) -> dict[str, Any]:
        """Hand key groups over to ``assignment`` (planned from the current one, over the
        same shards) with their state; call it between batches (the pump does)."""
        info: dict[str, Any] = await self.router.rescale.remote(
            {}, sorted(self.shards), None, assignment.to_json()
        )
        self.assignment = Assignment.from_json(await self.router.assignment.remote())
        return info

    async def _warm_sinks(self) -> None:
        """Start the sink workers and open their stores now, not under the first alerts.

        A task worker process takes a second or two to start and import; without this the
        first batches' latency would include it.
        """
        # The functions the router calls, with what it sends: a worker's first call of a
        # function fetches it and imports what it needs, which takes a second of CPU too.
        warm = [
            call
            for _ in range(_SINK_WORKERS)
            for call in (
                persist_alert_batches.remote(self.settings, PackedAlerts.pack([])),
                persist_alerts.remote(self.settings, []),
            )
        ]
        if self.settings.metrics_backend != "memory":
            warm += [
                record_metrics.remote(self.settings, MetricDeltas(), {})
                for _ in range(_SINK_WORKERS)
            ]
        await asyncio.gather(*warm)

    def _refuse_if_running(self) -> None:
        """Our actors are named; another live pipeline in the namespace must not be touched."""
        ns = self.settings.ray_namespace
        try:
            ray.get_actor(ROUTER_NAME, namespace=ns)
        except ValueError:
            return
        msg = (
            f"a rayworker pipeline is already running in Ray namespace {ns!r}; stop it first "
            "or give this one its own namespace (RAYWORKER_RAY_NAMESPACE)"
        )
        raise ConfigError(msg)

    async def pump(
        self,
        batches: AsyncIterator[Batch],
        *,
        ack: Ack | None = None,
        dead_letter: DeadLetter | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[PumpStats], None] | None = None,
        bounded: bool = False,
        replay: Replay | None = None,
        lag: Lag | None = None,
    ) -> PumpStats:
        """Feed batches until the source ends or ``stop`` is set; then drain
        (:class:`~rayworker.pipeline.pump.Pump`).

        ``bounded``: the source is finite (a file), so once it ends every shard settles what
        is pending, as ``rayworker replay`` does at the end of its input. ``replay``: required
        by a recoverable pipeline; the pump recovers (and replays) before the first batch,
        which resumes from the last checkpoint of an earlier run, and after any failure.
        ``lag``: the source's consumer lag, which drives the autoscaler when the settings
        enable it.
        """
        policy = self.settings.autoscale
        balance = self.settings.balance
        pump = Pump(
            self,
            ack=ack,
            dead_letter=dead_letter,
            stop=stop,
            on_progress=on_progress,
            replay=replay,
            autoscaler=Autoscaler(policy) if policy.enabled else None,
            lag=lag,
            balancer=LoadBalancer(balance) if balance.enabled else None,
        )
        return await pump.run(batches, bounded=bounded)

    async def recover(self) -> dict[str, Any]:
        """The router's :meth:`~rayworker.pipeline.router.Router.recover`, once it answers
        (Ray may be restarting it); raises after ``recovery_timeout_s``."""
        started = time.monotonic()
        deadline = started + self.settings.recovery_timeout_s
        while True:
            try:
                info: dict[str, Any] = await self.router.recover.remote()
                self._adopt_layout(info["shards"])
                _log.warning(
                    "pipeline recovered from checkpoint %d (epoch %d) in %.2f s",
                    info["barrier"],
                    info["epoch"],
                    time.monotonic() - started,
                )
                return info
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)

    def _adopt_layout(self, shards: list[int]) -> None:
        """After a recovery: the router's shards are the checkpoint's; stop any this driver
        started for a rescale that did not complete."""
        for shard in [s for s in self.shards if s not in shards]:
            ray.kill(self.shards.pop(shard))
        for shard in shards:
            if shard not in self.shards:
                self.shards[shard] = ray.get_actor(
                    shard_name(shard), namespace=self.settings.ray_namespace
                )

    async def traced_submit(
        self, batch: Batch, order: tuple[str, int] | None = None
    ) -> tuple[Receipt, Carrier | None]:
        """Submit inside a ``rayworker.ingest`` span that continues the producers' trace
        (``order``: as :meth:`~rayworker.pipeline.router.Router.submit` takes it)."""
        parent, linked = choose_parent([c for _, c in batch.traces])
        limit = self.settings.telemetry.max_links
        traced: dict[str, Carrier] = {}
        if batch.traces:
            carriers = sampled_lines(batch.traces)
            ids = event_ids(batch.lines, carriers)
            traced = {event_id: carriers[i] for i, event_id in ids.items()}
        with tracer().start_as_current_span(
            "rayworker.ingest",
            context=context_of(parent),
            kind=SpanKind.CONSUMER,
            links=links(linked, limit),
            attributes={
                "messaging.system": "redis" if batch.token is not None else "rayworker",
                "messaging.batch.message_count": len(batch.lines),
                "rayworker.traced_events": len(batch.traces),
            },
        ) as span:
            carrier = carrier_of()
            receipt: Receipt = await self.router.submit.remote(
                batch.lines, carrier, traced, batch.position, order
            )
            span.set_attribute("rayworker.ticket", receipt.ticket)
            span.set_attribute("rayworker.rejected", len(receipt.rejections))
            span.set_attribute("rayworker.late", len(receipt.late))
        return receipt, carrier

    async def traced_ack(
        self, ack: Ack, acks: list[Any], tickets: list[int], carriers: list[Carrier]
    ) -> None:
        """Acknowledge inside a ``rayworker.ack`` span of the first finished batch's trace."""
        with tracer().start_as_current_span(
            "rayworker.ack",
            context=context_of(carriers[0]),
            links=links(carriers[1:], self.settings.telemetry.max_links),
            attributes={"rayworker.tickets": len(tickets), "rayworker.tokens": len(acks)},
        ):
            await ack(acks)

    async def shard_stats(self) -> list[dict[str, Any]]:
        """Each shard's counters."""
        result: list[dict[str, Any]] = await asyncio.gather(
            *(h.stats.remote() for h in self.shards.values())
        )
        return result

    async def flush_telemetry(self) -> None:
        """Export every process's finished spans now (a killed actor cannot flush its own)."""
        if not self.tracing:
            return
        actors = [h for h in [self.router, *self.shards.values()] if h is not None]
        calls = [h.flush_telemetry.remote() for h in actors]
        calls += [flush_sink_telemetry.remote(self.settings) for _ in range(_SINK_WORKERS * 2)]
        try:
            await asyncio.wait_for(asyncio.gather(*calls), _FLUSH_TIMEOUT_S)
        except (TimeoutError, ray.exceptions.RayError):
            _log.warning("some spans could not be flushed before stopping")
        flush_tracing()

    def stop(self) -> None:
        """Stop the actors (after :meth:`pump` has drained; call :meth:`flush_telemetry` first
        to keep their last spans)."""
        if self.notifier is not None:
            # Flush every group and deliver what can be delivered; the rest is dead-lettered.
            ray.get(self.notifier.drain.remote(_NOTIFY_DRAIN_S), timeout=_NOTIFY_DRAIN_S + 10)
        for handle in [self.router, *self.shards.values(), self.metrics_actor, self.notifier]:
            if handle is not None:
                ray.kill(handle)
        self.router = None
        self.shards = {}
        self.metrics_actor = None
        self.notifier = None
