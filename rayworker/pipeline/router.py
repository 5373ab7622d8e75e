"""The router actor: screens each batch once, buffers per shard, sends in order, tracks acks.

Flow of one *ticket* (one batch handed to :meth:`Router.submit`, e.g. one XREADGROUP read):

1. The pure :class:`~rayworker.partition.Partitioner` decodes and screens it (rejections and
   late events go back to the caller, which dead-letters them) and splits the usable events
   into per-shard parts.
2. Parts wait in a per-shard buffer, which is flushed as one columnar
   :class:`~rayworker.partition.ShardBatch` once it holds ``flush_events`` events or its
   oldest part has waited ``linger_ms``.
3. Flushed batches queue in a per-shard outbox; one sender per shard sends them in order,
   with at most ``max_inflight`` unanswered. Because only the sender sends, and it sends in
   outbox order, every key's events reach its shard in arrival order. :meth:`submit` waits
   while any outbox is full, so a slow shard slows ingest instead of filling memory.
4. When a shard answers, its alerts are persisted by a stateless task; when every part of a
   ticket is answered and persisted, the ticket is *done* and the caller may acknowledge its
   stream entries (:meth:`completed`). A ticket with a failed part is reported as *failed*
   and must not be acknowledged, so its entries are delivered again.

Tracing (:mod:`rayworker.telemetry`): a traced ticket comes with the context of the caller's
``rayworker.ingest`` span; its ``route`` span is a child of it (``validate`` of ``route``), and a
flushed batch carries the context of its first ticket's ``route`` span (links to the others,
and the producers' contexts of its traced events) to the shard, whose ``detect`` context in
turn goes with the alerts to the ``persist_alerts`` task. Untraced tickets cost nothing extra.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import ray

from rayworker.alerts import Alert
from rayworker.detect import DetectorConfig, LateEvent, MetricDeltas
from rayworker.events import Rejection
from rayworker.health import Status, worst
from rayworker.partition import Partitioner, ShardBatch
from rayworker.pipeline.notifier import notifier_handle
from rayworker.pipeline.shard import ShardOutput
from rayworker.pipeline.sinks import METRICS_ACTOR, persist_alerts, record_error, record_metrics
from rayworker.routing import Assignment
from rayworker.rules import Overrides, RulePack
from rayworker.settings import Settings
from rayworker.sinks.histogram import LatencyHistogram
from rayworker.telemetry.propagation import Carrier, carrier_of, context_of
from rayworker.telemetry.ray_metrics import PipelineMetrics
from rayworker.telemetry.setup import flush_tracing, setup_process
from rayworker.telemetry.spans import tracer
from rayworker.telemetry.traced import BatchTrace

__all__ = ["ROUTER_NAME", "Receipt", "Router"]

ROUTER_NAME = "rayworker-router"
_log = logging.getLogger("rayworker.router")
_METRICS_EVERY_S = 1.0
_PING_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Receipt:
    """What :meth:`Router.submit` tells the caller at once."""

    ticket: int
    accepted: int
    rejections: list[Rejection]
    late: list[LateEvent]


@dataclass(slots=True)
class _Ticket:
    received: float
    tenants: Counter[str]
    outstanding: int = 0
    failed: bool = False


@dataclass(slots=True)
class _Outgoing:
    batch: ShardBatch
    tickets: list[int]
    trace: BatchTrace | None = None


@dataclass(slots=True)
class _Buffer:
    parts: list[ShardBatch] = field(default_factory=list)
    tickets: list[int] = field(default_factory=list)
    events: int = 0
    oldest: float = 0.0
    traces: list[Carrier] = field(default_factory=list)
    """The route-span context of each traced ticket in the buffer."""
    traced_events: dict[str, Carrier] = field(default_factory=dict)


class Router:
    """See the module docstring. Runs as an async Ray actor (:func:`start_router`)."""

    def __init__(
        self,
        settings: Settings,
        pack: RulePack,
        config: DetectorConfig,
        assignment: Assignment,
        shards: dict[int, Any],
        overrides: Overrides | None = None,
    ) -> None:
        self.settings = settings
        self.partitioner = Partitioner(
            pack,
            assignment,
            config,
            overrides=overrides,
            integrity=settings.integrity.config(),
        )
        self.shards = shards
        self.flush_events = settings.flush_events
        self.linger_s = settings.linger_ms / 1000
        self.max_inflight = settings.max_inflight
        self.buffers: dict[int, _Buffer] = {s: _Buffer() for s in shards}
        self.outbox: dict[int, deque[_Outgoing]] = {s: deque() for s in shards}
        self.inflight: dict[int, set[asyncio.Future[ShardOutput]]] = {s: set() for s in shards}
        self.finishing: set[asyncio.Task[None]] = set()
        self.tickets: dict[int, _Ticket] = {}
        self.done: list[int] = []
        self.failed: list[int] = []
        self.pending_metrics = MetricDeltas()
        self.pending_latency: dict[str, list[float]] = {}
        self.sent: Counter[int] = Counter()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._metrics_lock = asyncio.Lock()
        self._next_ticket = 0
        self._wake: dict[int, asyncio.Event] = {}
        self._space: asyncio.Condition | None = None
        self._background: list[asyncio.Task[None]] = []
        self._metrics_actor: Any = None
        self._notifier: Any = None
        self._last_metrics = time.monotonic()
        self.batch_latency = LatencyHistogram()
        self.key_groups = Counter(assignment.owner)
        setup_process(
            settings.telemetry, component="router", node=ray.get_runtime_context().get_node_id()
        )
        self.ray_metrics = PipelineMetrics.get()
        for shard in shards:
            self.ray_metrics.key_groups.set(self.key_groups.get(shard, 0), {"shard": str(shard)})

    # --- set-up ------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._space is not None:
            return
        self._space = asyncio.Condition()
        for shard in self.shards:
            self._wake[shard] = asyncio.Event()
            self._background.append(asyncio.create_task(self._sender(shard)))
        self._background.append(asyncio.create_task(self._ticker()))
        if self.settings.metrics_backend == "memory":
            self._metrics_actor = ray.get_actor(
                METRICS_ACTOR, namespace=self.settings.ray_namespace
            )
        self._notifier = notifier_handle(self.settings.ray_namespace)

    # --- ingest ------------------------------------------------------------------------------

    async def submit(
        self,
        lines: list[bytes],
        trace: Carrier | None = None,
        traced_events: dict[str, Carrier] | None = None,
    ) -> Receipt:
        """Screen and route one batch; returns its ticket, rejections and late events.

        ``trace``: the context of the caller's ``rayworker.ingest`` span (the batch's
        ``validate`` and ``route`` spans are its children); ``traced_events``: event id ->
        the producer's context, for the events that came with a sampled one.
        """
        self._ensure_started()
        ticket = self._next_ticket
        self._next_ticket += 1
        if trace is None:
            return await self._submit(ticket, lines, None, None)
        context = context_of(trace)
        with tracer().start_as_current_span(
            "rayworker.route", context=context, attributes={"rayworker.ticket": ticket}
        ) as span:
            receipt = await self._submit(ticket, lines, carrier_of(), traced_events)
            span.set_attribute("rayworker.accepted", receipt.accepted)
        return receipt

    async def _submit(
        self,
        ticket: int,
        lines: list[bytes],
        route: Carrier | None,
        traced_events: dict[str, Carrier] | None,
    ) -> Receipt:
        if route is None:
            part = self.partitioner.split_lines(lines)
        else:
            with tracer().start_as_current_span(
                "rayworker.validate", attributes={"rayworker.events": len(lines)}
            ) as span:
                part = self.partitioner.split_lines(lines)
                span.set_attribute("rayworker.rejected", len(part.rejections))
                span.set_attribute("rayworker.late", len(part.late))
        now = time.monotonic()
        self.counts["events"] += len(lines)
        self.counts["accepted"] += part.accepted
        self.counts["rejected"] += len(part.rejections)
        self.counts["late"] += len(part.late)
        self.pending_metrics.merge(part.metrics)
        state = self.tickets[ticket] = _Ticket(now, Counter(part.tenants))
        for shard, sub in part.shards.items():
            state.outstanding += 1
            buffer = self.buffers[shard]
            if not buffer.parts:
                buffer.oldest = now
            buffer.parts.append(sub)
            buffer.tickets.append(ticket)
            buffer.events += len(sub)
            if route is not None:
                buffer.traces.append(route)
                if traced_events:
                    buffer.traced_events.update(traced_events)
            if buffer.events >= self.flush_events:
                self._flush(shard)
        if part.alerts:
            # Integrity alerts are raised here, while screening; the ticket is done (and its
            # entries acked) only once they are persisted, like the shards' alerts.
            state.outstanding += 1
            persisting = asyncio.create_task(self._persist_screened(ticket, part.alerts))
            self.finishing.add(persisting)
            persisting.add_done_callback(self._finished)
        if state.outstanding == 0:
            self._finish_ticket(ticket)
        await self._wait_for_space()
        return Receipt(ticket, part.accepted, part.rejections, part.late)

    async def _persist_screened(self, ticket: int, alerts: list[Alert]) -> None:
        failed = False
        try:
            await persist_alerts.remote(self.settings, alerts)
            self._notify(alerts)
        except Exception as exc:  # noqa: BLE001 - any failure fails the ticket, never the router
            failed = True
            kind = f"integrity_{type(exc).__name__}"
            self.errors[kind] += 1
            await self._record_error(kind)
        state = self.tickets[ticket]
        state.failed |= failed
        state.outstanding -= 1
        if state.outstanding == 0:
            self._finish_ticket(ticket)

    async def completed(self) -> tuple[list[int], list[int]]:
        """Tickets finished since the last call: (done, failed)."""
        done, self.done = self.done, []
        failed, self.failed = self.failed, []
        return done, failed

    async def drain(self) -> None:
        """Flush every buffer and wait until everything sent is answered and persisted."""
        self._ensure_started()
        for shard in self.shards:
            self._flush(shard)
        while any(self.outbox.values()) or any(self.inflight.values()) or self.finishing:
            pending: list[asyncio.Future[Any]] = [*self.finishing]
            pending += [f for futures in self.inflight.values() for f in futures]
            if pending:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0.005)
        await self._send_metrics()

    async def finish(self) -> int:
        """End of a bounded input: drain, settle every shard, persist; returns alerts flushed."""
        await self.drain()
        outputs: list[ShardOutput] = await asyncio.gather(
            *(handle.flush.remote() for handle in self.shards.values())
        )
        alerts = [a for out in outputs for a in out.alerts]
        for out in outputs:
            self.pending_metrics.merge(out.metrics)
        if alerts:
            await persist_alerts.remote(self.settings, alerts)
            self._notify(alerts)
        await self._send_metrics()
        return len(alerts)

    # --- internals -----------------------------------------------------------------------------

    def _notify(self, alerts: list[Alert]) -> None:
        """Hand persisted alerts to the notifier without waiting: it queues them, or drops
        and counts them when its queue is full, so notifying never slows this router."""
        if self._notifier is not None:
            self._notifier.enqueue.remote(alerts)

    def _flush(self, shard: int) -> None:
        buffer = self.buffers[shard]
        if not buffer.parts:
            return
        self.buffers[shard] = _Buffer()
        trace = None
        if buffer.traces:
            trace = BatchTrace(buffer.traces[0], buffer.traces[1:], buffer.traced_events)
        self.outbox[shard].append(_Outgoing(ShardBatch.concat(buffer.parts), buffer.tickets, trace))
        self._wake[shard].set()

    async def _wait_for_space(self) -> None:
        assert self._space is not None
        limit = self.max_inflight
        # Batches whose alerts are still being persisted count too: a slow database must
        # slow ingest down rather than let finished batches pile up.
        persisting = limit * len(self.shards) * 2

        def room() -> bool:
            return len(self.finishing) < persisting and all(
                len(box) < limit for box in self.outbox.values()
            )

        if room():
            return
        async with self._space:
            await self._space.wait_for(room)

    async def _notify_space(self) -> None:
        assert self._space is not None
        async with self._space:
            self._space.notify_all()

    async def _sender(self, shard: int) -> None:
        outbox, inflight, wake = self.outbox[shard], self.inflight[shard], self._wake[shard]
        handle = self.shards[shard]
        while True:
            await wake.wait()
            while outbox:
                while len(inflight) >= self.max_inflight:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                item = outbox.popleft()
                self.sent[shard] += len(item.batch)
                answer: asyncio.Future[ShardOutput] = asyncio.ensure_future(
                    handle.process.remote(item.batch, item.trace)
                )
                # The slot frees when the shard answers; persisting its alerts must not hold
                # it, or the database's latency would cap detection throughput.
                inflight.add(answer)
                answer.add_done_callback(inflight.discard)
                finishing = asyncio.create_task(self._complete(answer, item))
                self.finishing.add(finishing)
                finishing.add_done_callback(self._finished)
                await self._notify_space()
            wake.clear()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.finishing.discard(task)
        if self._space is not None:
            asyncio.ensure_future(self._notify_space())  # noqa: RUF006 - short-lived, never fails

    async def _complete(self, answer: asyncio.Future[ShardOutput], item: _Outgoing) -> None:
        failed = False
        try:
            output = await answer
            self.pending_metrics.merge(output.metrics)
            if output.alerts:
                await persist_alerts.remote(self.settings, output.alerts, output.trace)
                self._notify(output.alerts)
        except Exception as exc:  # noqa: BLE001 - any failure fails the tickets, never the router
            failed = True
            kind = f"shard_{type(exc).__name__}"
            self.errors[kind] += 1
            _log.warning(
                "a shard batch failed; its source entries will be delivered again",
                extra={"tickets": item.tickets, "error": kind},
            )
            await self._record_error(kind)
        for ticket in item.tickets:
            state = self.tickets[ticket]
            state.failed |= failed
            state.outstanding -= 1
            if state.outstanding == 0:
                self._finish_ticket(ticket)

    def _finish_ticket(self, ticket: int) -> None:
        state = self.tickets.pop(ticket)
        if state.failed:
            self.failed.append(ticket)
            return
        self.done.append(ticket)
        latency_ms = (time.monotonic() - state.received) * 1000
        self.batch_latency = self.batch_latency + LatencyHistogram.of([latency_ms])
        self.ray_metrics.observe(self.ray_metrics.batch_seconds, latency_ms / 1000)
        for tenant, n in state.tenants.items():
            self.pending_latency.setdefault(tenant, []).extend([latency_ms] * n)

    async def _ticker(self) -> None:
        """Flush buffers that lingered too long; send metrics about once a second."""
        interval = max(self.linger_s / 2, 0.002)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for shard, buffer in self.buffers.items():
                if buffer.parts and now - buffer.oldest >= self.linger_s:
                    self._flush(shard)
            if now - self._last_metrics >= _METRICS_EVERY_S:
                await self._send_metrics()

    async def _send_metrics(self) -> None:
        # One send at a time: finish() must not return while the ticker's send is still in
        # flight, or stopping the router right after would lose those counts.
        async with self._metrics_lock:
            self._last_metrics = time.monotonic()
            pending = self.pending_metrics
            if not self.pending_latency and pending.is_empty():
                return
            deltas, self.pending_metrics = pending, MetricDeltas()
            latency, self.pending_latency = self.pending_latency, {}
            self.ray_metrics.record(deltas)
            try:
                if self._metrics_actor is not None:
                    await self._metrics_actor.record.remote(deltas, latency)
                else:
                    await record_metrics.remote(self.settings, deltas, latency)
            except Exception as exc:  # noqa: BLE001 - metrics must never stop detection
                self.errors[f"metrics_{type(exc).__name__}"] += 1

    async def _record_error(self, kind: str) -> None:
        try:
            if self._metrics_actor is not None:
                await self._metrics_actor.record_error.remote(None, kind)
            else:
                await record_error.remote(self.settings, None, kind)
        except Exception:  # noqa: BLE001, S110 - counting an error must not raise another
            pass

    # --- introspection -------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """Counters: events seen, accepted, rejected, late; events sent per shard; errors."""
        return {
            **self.counts,
            "sent": {str(k): v for k, v in sorted(self.sent.items())},
            "buffered": sum(b.events for b in self.buffers.values()),
            "queued_batches": sum(len(b) for b in self.outbox.values()),
            "inflight_batches": sum(len(t) for t in self.inflight.values()),
            "persisting_batches": len(self.finishing),
            "open_tickets": len(self.tickets),
            "errors": dict(self.errors),
            "key_groups": {str(s): self.key_groups.get(s, 0) for s in sorted(self.shards)},
            "batch_latency_ms": self.batch_latency.to_fields(),
        }

    async def flush_telemetry(self) -> bool:
        """Export this process's finished spans now (before the actor is stopped)."""
        return flush_tracing()

    async def health(self) -> dict[str, Any]:
        """Router status plus each shard's, pinged with a timeout."""
        names = list(self.shards)
        refs = [self.shards[s].ping.remote() for s in names]
        shards: dict[str, dict[str, str]] = {}
        for shard, ref in zip(names, refs, strict=True):
            try:
                await asyncio.wait_for(ref, _PING_TIMEOUT_S)
                queued = len(self.outbox[shard])
                status = "WARNING" if queued >= self.max_inflight else "OK"
                shards[f"shard-{shard}"] = {
                    "status": status,
                    "message": f"{self.sent[shard]:,} events sent, {queued} batches queued",
                }
            except Exception as exc:  # noqa: BLE001 - any failure means unreachable
                shards[f"shard-{shard}"] = {
                    "status": "CRITICAL",
                    "message": f"shard not answering: {type(exc).__name__}",
                }
        overall = worst(Status(s["status"]) for s in shards.values())
        return {
            "status": str(overall),
            "message": (
                f"{self.counts['events']:,} events routed to {len(names)} shards, "
                f"{len(self.tickets)} batches open"
            ),
            "shards": shards,
            "stats": await self.stats(),
        }


def start_router(
    settings: Settings,
    pack: RulePack,
    config: DetectorConfig,
    assignment: Assignment,
    shards: dict[int, Any],
    overrides: Overrides | None = None,
) -> Any:
    """Start the router as a named async actor."""
    remote_cls = ray.remote(Router)
    return remote_cls.options(
        name=ROUTER_NAME,
        namespace=settings.ray_namespace,
        num_cpus=0.5,
        max_concurrency=64,
    ).remote(settings, pack, config, assignment, shards, overrides)
