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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from opentelemetry.trace import SpanKind

from rayworker.detect import DetectorConfig, LateEvent, MetricDeltas
from rayworker.errors import ConfigError, SinkError
from rayworker.events import Rejection
from rayworker.notify.config import load_notify_config
from rayworker.pipeline.notifier import start_notifier
from rayworker.pipeline.router import ROUTER_NAME, Receipt, start_router
from rayworker.pipeline.runtime import connect_ray
from rayworker.pipeline.shard import shard_actor
from rayworker.pipeline.sinks import (
    METRICS_ACTOR,
    MetricsActor,
    flush_sink_telemetry,
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

_SINK_WORKERS = 2
"""Sink task workers started before the first event (each holds its own store)."""
_FLUSH_TIMEOUT_S = 10.0
_NOTIFY_DRAIN_S = 10.0
"""How long a stop waits for notifications still being delivered."""

Ack = Callable[[Sequence[Any]], Awaitable[None]]
DeadLetter = Callable[[Sequence[Rejection], Sequence[LateEvent], list[bytes]], Awaitable[None]]
Replay = Callable[[int, Mapping[str, list[str]]], AsyncIterator["Batch"]]
"""Replays a recoverable source after a recovery: given the checkpoint's position and the
errors each entry has failed with so far, yields every unacknowledged entry above the
position in stream order (entries that failed before come alone, ``isolated``; entries that
failed ``poison_attempts`` times are dead-lettered instead) and acknowledges those at or
below it."""


@dataclass(slots=True)
class Batch:
    """Lines from a source and the token that acknowledges them (None: nothing to ack)."""

    lines: list[bytes]
    token: Any = None
    traces: list[tuple[int, Carrier]] = field(default_factory=list)
    """(line index, producer's trace context) of the lines that came with one."""
    position: int | None = None
    """The highest stream position of the batch's entries (:func:`~rayworker.checkpoint.
    stream_position`); None for sources without positions."""
    isolated: bool = False
    """Submit alone and wait for the outcome: the entry failed before, and only alone does
    another failure say that this entry is the cause."""


@dataclass(slots=True)
class PumpStats:
    """What :meth:`Pipeline.pump` moved."""

    events: int = 0
    accepted: int = 0
    rejected: int = 0
    late: int = 0
    acked: int = 0
    failed: int = 0
    recoveries: int = 0
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second so far."""
        elapsed = self.elapsed_s or (time.perf_counter() - self.started)
        return self.events / elapsed if elapsed > 0 else 0.0


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


def _blames(error: str, isolated: bool) -> bool:
    """Whether a failed ticket's error counts against its entries (towards poison).

    A batch that raised did so on its contents. A shard that died, restarted or was
    recovered says nothing about the entries it happened to hold, unless it held only one.
    """
    if "StaleEpoch" in error or "restarted" in error:
        return False
    if "RayTaskError" in error:
        return True
    return isolated


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
        self.shards = {
            s: shard_actor(
                s,
                self.pack,
                self.overrides,
                self.config,
                num_cpus=self.settings.shard_cpus,
                namespace=ns,
                telemetry=self.settings.telemetry,
                recoverable=self.recoverable,
                poison=(
                    self.settings.fault_poison.encode() if self.settings.fault_poison else None
                ),
            )
            for s in range(self.settings.shards)
        }
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

    async def _warm_sinks(self) -> None:
        """Start the sink workers and open their stores now, not under the first alerts.

        A task worker process takes a second or two to start and import; without this the
        first batches' latency would include it.
        """
        warm = [persist_alerts.remote(self.settings, []) for _ in range(_SINK_WORKERS)]
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

    async def pump(  # noqa: PLR0915 - the feed loop and its recovery share their bookkeeping
        self,
        batches: AsyncIterator[Batch],
        *,
        ack: Ack | None = None,
        dead_letter: DeadLetter | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[PumpStats], None] | None = None,
        bounded: bool = False,
        replay: Replay | None = None,
    ) -> PumpStats:
        """Feed batches until the source ends or ``stop`` is set; then drain.

        ``bounded``: the source is finite (a file), so once it ends every shard settles what
        is pending, as ``rayworker replay`` does at the end of its input. ``replay``: required
        by a recoverable pipeline; the pump recovers (and replays) before the first batch,
        which resumes from the last checkpoint of an earlier run, and after any failure.
        """
        stats = PumpStats()
        tokens: dict[int, Any] = {}
        traces: dict[int, Carrier] = {}
        failures: dict[str, list[str]] = {}
        isolated: set[int] = set()
        if self.recoverable and replay is None:
            msg = "a recoverable pipeline needs a source that can replay (a Redis Stream)"
            raise ConfigError(msg)

        async def settle() -> bool:
            """Acknowledge what finished; False if something failed (recover, then)."""
            done, failed = await self.router.completed.remote()
            acked = [t for t in done if tokens.get(t) is not None]
            acks = [tokens.pop(t) for t in done if t in tokens]
            acks = [a for a in acks if a is not None]
            for t, error in failed:
                token = tokens.pop(t, None)
                traces.pop(t, None)
                if self.recoverable and token is not None and _blames(error, t in isolated):
                    for entry in token:
                        failures.setdefault(entry, []).append(error)
                isolated.discard(t)
            stats.failed += len(failed)
            carriers = [c for t in done if (c := traces.pop(t, None)) is not None]
            if acks and ack is not None:
                if carriers:
                    await self._traced_ack(ack, acks, acked, carriers)
                else:
                    await ack(acks)
                stats.acked += len(acks)
            return not failed

        async def submit(batch: Batch) -> None:
            if not batch.lines:
                return
            if self.tracing:
                receipt, carrier = await self._traced_submit(batch)
                if carrier is not None:
                    traces[receipt.ticket] = carrier
            else:
                receipt = await self.router.submit.remote(batch.lines, None, None, batch.position)
            stats.events += len(batch.lines)
            stats.accepted += receipt.accepted
            stats.rejected += len(receipt.rejections)
            stats.late += len(receipt.late)
            if dead_letter is not None and (receipt.rejections or receipt.late):
                await dead_letter(receipt.rejections, receipt.late, batch.lines)
            tokens[receipt.ticket] = batch.token
            if batch.isolated:
                isolated.add(receipt.ticket)

        async def feed(batch: Batch) -> bool:
            """Submit one batch and acknowledge what finished; False: recovery is needed."""
            try:
                await submit(batch)
                if batch.isolated:
                    await self.router.drain.remote()
                return await settle()
            except ray.exceptions.RayActorError:
                return False  # the router died; Ray restarts it

        async def recover() -> None:
            """Restore from the last checkpoint and replay until a replay gets through."""
            assert replay is not None
            while True:
                info = await self._recover()
                tokens.clear()
                isolated.clear()
                traces.clear()
                stats.recoveries += 1
                replayed = True
                async for batch in replay(info["position"], failures):
                    if not await feed(batch):
                        replayed = False
                        break
                if replayed:
                    return

        if self.recoverable:
            await recover()
        async for batch in batches:
            if self.recoverable:
                if not await feed(batch):
                    await recover()
            else:
                await submit(batch)
                await settle()
            if on_progress is not None:
                on_progress(stats)
            if stop is not None and stop.is_set():
                break
        if bounded:
            await self.router.finish.remote()
        elif self.recoverable:
            while True:
                try:
                    await self.router.drain.remote()
                    if await settle():
                        break
                except ray.exceptions.RayActorError:
                    pass
                await recover()
        else:
            await self.router.drain.remote()
        await settle()
        stats.elapsed_s = time.perf_counter() - stats.started
        return stats

    async def _recover(self) -> dict[str, int]:
        """The router's :meth:`~rayworker.pipeline.router.Router.recover`, once it answers
        (Ray may be restarting it); raises after ``recovery_timeout_s``."""
        started = time.monotonic()
        deadline = started + self.settings.recovery_timeout_s
        while True:
            try:
                info: dict[str, int] = await self.router.recover.remote()
                logging.getLogger(__name__).warning(
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

    async def _traced_submit(self, batch: Batch) -> tuple[Receipt, Carrier | None]:
        """Submit inside a ``rayworker.ingest`` span that continues the producers' trace."""
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
                batch.lines, carrier, traced, batch.position
            )
            span.set_attribute("rayworker.ticket", receipt.ticket)
            span.set_attribute("rayworker.rejected", len(receipt.rejections))
            span.set_attribute("rayworker.late", len(receipt.late))
        return receipt, carrier

    async def _traced_ack(
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
            logging.getLogger(__name__).warning("some spans could not be flushed before stopping")
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
