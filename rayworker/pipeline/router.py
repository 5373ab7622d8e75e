"""The router actor: screens each batch once, buffers per shard, sends in order, tracks acks.

Flow of one *ticket* (one batch handed to :meth:`Router.submit`, e.g. one XREADGROUP read):

1. The pure :class:`~rayworker.partition.Partitioner` decodes and screens it (rejections and
   late events go back to the caller, which dead-letters them) and splits the usable events
   into per-shard parts.
2. Parts wait in a per-shard buffer, which is flushed as one columnar
   :class:`~rayworker.partition.ShardBatch` once it holds ``flush_events`` events or its
   oldest part has waited ``linger_ms``, and at once while the shard has nothing in flight
   (Nagle's rule: waiting only pays while the shard is busy).
3. Flushed batches queue in a per-shard outbox; one sender per shard sends them in order,
   with at most ``max_inflight`` unanswered. Because only the sender sends, and it sends in
   outbox order, every key's events reach its shard in arrival order. :meth:`submit` waits
   while any outbox is full, so a slow shard slows ingest instead of filling memory.
4. When a shard answers, its alerts are persisted by a stateless task; when every part of a
   ticket is answered and persisted, the ticket is *done* and the caller may acknowledge its
   stream entries (:meth:`completed`). A ticket with a failed part is reported as *failed*
   and must not be acknowledged, so its entries are delivered again.

Recovery (a pipeline reading a stream, ``recoverable=True``): every
``checkpoint_interval_s`` the router starts a *barrier*. It flushes every buffer and queues a
checkpoint call behind them in each shard's outbox, so each shard snapshots exactly the state
of the tickets submitted before the barrier; a stateless task writes each snapshot to the
alert store's database, and the router's own state (watermarks, counters) is written last,
marking the barrier complete. Only then are its tickets released to :meth:`completed` (and so
acknowledged on the stream) and its metric deltas sent: a crash can never lose an
acknowledged entry, nor count one twice. On any failure (a shard died, failed a batch or
restarted; the router itself restarted) the driver calls :meth:`recover`: every state holder
goes back to the latest complete checkpoint, in a new *epoch* (answers and calls of older
epochs are discarded or refused), and the driver replays the stream entries after the
checkpoint's position, in stream order. Detection is deterministic, so the replay rebuilds
exactly the state and alerts an uninterrupted run has, and alert upserts are idempotent.

Tracing (:mod:`rayworker.telemetry`): a traced ticket comes with the context of the caller's
``rayworker.ingest`` span; its ``route`` span is a child of it (``validate`` of ``route``), and a
flushed batch carries the context of its first ticket's ``route`` span (links to the others,
and the producers' contexts of its traced events) to the shard, whose ``detect`` context in
turn goes with the alerts to the ``persist_alerts`` task. Untraced tickets cost nothing extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import ray

from rayworker.alerts import Alert, PackedAlerts
from rayworker.checkpoint import ROUTER_OWNER, decode_state, encode_state, shard_owner
from rayworker.detect import DetectorConfig, LateEvent, MetricDeltas
from rayworker.errors import ConfigError, SinkError, StateError
from rayworker.events import Rejection
from rayworker.health import Status, worst
from rayworker.partition import Partitioner, ShardBatch
from rayworker.pipeline.group_commit import GroupCommit
from rayworker.pipeline.notifier import notifier_handle
from rayworker.pipeline.shard import ShardOutput, shard_name
from rayworker.pipeline.sinks import (
    METRICS_ACTOR,
    latest_checkpoint,
    load_checkpoint_state,
    persist_alert_batches,
    persist_alerts,
    prune_checkpoints,
    record_error,
    record_metrics,
    save_checkpoint,
)
from rayworker.resilience import StoreGuard
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
_RESTORE_RETRY_S = 0.25
_RESTORE_ATTEMPTS = 5
_QUIESCE_ATTEMPTS = 5
_BARRIER_TIMEOUT_S = 60.0
_SCALE_ATTEMPTS = 3
"""A scale request is retried (after the driver's recovery) this often before it fails."""
_WATCH_EVERY_S = 0.5
"""How often a recoverable router checks that no shard restarted behind its back."""


MAX_BATCH_EVENTS = 20_000
"""Batches queued for a busy shard are joined up to this many events (see
:meth:`Router._next_outgoing`)."""


@dataclass(slots=True)
class Receipt:
    """What :meth:`Router.submit` tells the caller at once."""

    ticket: int
    accepted: int
    rejections: list[Rejection]
    late: list[LateEvent]
    done: list[int] = field(default_factory=list)
    """Earlier tickets finished since the last receipt or :meth:`Router.completed` call
    (taken when this submit began, so each is older than this ticket)."""
    failed: list[tuple[int, str]] = field(default_factory=list)
    """Earlier tickets that failed meanwhile, with the error of each."""


@dataclass(slots=True)
class _Ticket:
    received: float
    tenants: Counter[str]
    interval: int
    """The barrier that covers this ticket."""
    outstanding: int = 0
    failed: bool = False
    error: str | None = None


@dataclass(slots=True)
class _Outgoing:
    batch: ShardBatch | None
    tickets: list[int]
    epoch: int
    interval: int
    trace: BatchTrace | None = None
    barrier: int | None = None
    """Set (and ``batch`` None): checkpoint the shard for this barrier."""
    position: int = 0


@dataclass(slots=True)
class _Interval:
    """What the tickets covered by one barrier add up to, held until the barrier completes."""

    open: int = 0
    failed: int = 0
    done: list[int] = field(default_factory=list)
    metrics: MetricDeltas = field(default_factory=MetricDeltas)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)


@dataclass(slots=True)
class _Turns:
    """Takes a caller's concurrent submits in the order it numbered them (:meth:`Router.
    submit`'s ``order``)."""

    stream: str = ""
    next: int = 0
    changed: asyncio.Condition | None = None

    async def take(self, stream: str, number: int) -> None:
        """Wait for the turn of submit ``number`` of ``stream``."""
        assert self.changed is not None
        if stream != self.stream:
            # A new stream (a driver started, or recovered and resubmits) starts at 0; calls
            # of the stream it replaces are stale and fail (they can only be queued here
            # after their driver gave up on them).
            self.stream, self.next = stream, 0
            await self._notify()
        async with self.changed:
            await self.changed.wait_for(lambda: self.stream != stream or self.next == number)
        if self.stream != stream:
            msg = f"submit stream {stream} was superseded by {self.stream}; resubmit"
            raise StateError(msg)

    async def done(self, stream: str) -> None:
        """The submit holding the turn of ``stream`` is through: the next one's turn."""
        if stream == self.stream:
            self.next += 1
            await self._notify()

    async def _notify(self) -> None:
        assert self.changed is not None
        async with self.changed:
            self.changed.notify_all()


@dataclass(slots=True)
class _Scaling:
    """Scale requests (:meth:`Router.request_scale`) and the rescale running, if any."""

    running: bool = False
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no rescale holds submissions back."""
    target: int | None = None
    request: int = 0
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    done: int = 0
    attempts: int = 0
    """Failed attempts at the latest request."""

    def __post_init__(self) -> None:
        self.resumed.set()


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

    def __init__(  # noqa: PLR0915 - the actor's whole state, set up in one place
        self,
        settings: Settings,
        pack: RulePack,
        config: DetectorConfig,
        assignment: Assignment,
        shards: dict[int, Any],
        overrides: Overrides | None = None,
        recoverable: bool = False,
    ) -> None:
        self.settings = settings
        self._partitioner_args = (pack, assignment, config, overrides)
        self.partitioner = self._new_partitioner()
        self.recoverable = recoverable
        self.epoch = 0
        self.position = 0
        """The highest stream position submitted (0: none, or a source without positions)."""
        self.completed_barrier = self.completed_position = 0
        self.next_barrier = _rising_id(0)
        """Barrier ids grow strictly, also across recoveries and router restarts (they start
        from the wall clock in milliseconds): a checkpoint set is never overwritten by a later
        epoch's, so any complete set in the store is consistent."""
        self.intervals: dict[int, _Interval] = {}
        self.recoveries = 0
        # Alert writes retry (backoff, jitter) behind a breaker until the store answers: a
        # ticket waits rather than fails, so an outage back-pressures ingest and loses nothing.
        self.alert_store = StoreGuard(
            "alert store",
            retry_on=(SinkError, OSError),
            initial_backoff_s=0.1,
            max_backoff_s=5.0,
            failure_threshold=5,
            reset_timeout_s=5.0,
        )
        self.barrier_failures = self.checkpoint_bytes = 0
        self._barrier_task: asyncio.Task[None] | None = None
        self._barrier_saves: dict[int, list[asyncio.Future[int]]] = {}
        self._last_barrier = time.monotonic()
        self._since_barrier = False
        self._watch: asyncio.Task[None] | None = None
        self._recovering = False
        self._watched_at = 0.0
        self.shards = dict(shards)
        # The set to go back to if a recovery finds no checkpoint; later sets are in the
        # checkpoints, with their assignment.
        self._initial_shards = dict(shards)
        self.scaling = _Scaling()
        self.buffers: dict[int, _Buffer] = {s: _Buffer() for s in shards}
        self.outbox: dict[int, deque[_Outgoing]] = {s: deque() for s in shards}
        self.inflight: dict[int, set[asyncio.Future[ShardOutput]]] = {s: set() for s in shards}
        self.finishing: set[asyncio.Task[None]] = set()
        self.tickets: dict[int, _Ticket] = {}
        self.done: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self._released = asyncio.Event()
        """Set when a ticket is released to :meth:`completed` (done or failed)."""
        self.sent: Counter[int] = Counter()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._metrics_lock = asyncio.Lock()
        self._next_ticket = 0
        self._wake: dict[int, asyncio.Event] = {}
        self._space: asyncio.Condition | None = None
        self._turns = _Turns()
        self._alert_writes = GroupCommit(self._write_alerts)
        self._early_in_flight = 0
        self.early_writes = 0
        """Alert writes submitted with their shard batch (:meth:`_early_write`)."""
        self._background: list[asyncio.Task[None]] = []
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._metrics_actor: Any = None
        self._notifier: Any = None
        self._last_metrics = time.monotonic()
        self.batch_latency = LatencyHistogram()
        setup_process(
            settings.telemetry, component="router", node=ray.get_runtime_context().get_node_id()
        )
        self.ray_metrics = PipelineMetrics.get()
        self.key_groups: Counter[int] = Counter()
        self._set_key_groups(assignment)

    @property
    def flush_events(self) -> int:
        """Flush a shard's buffer once it holds this many events."""
        return self.settings.flush_events

    @property
    def linger_s(self) -> float:
        """Flush a shard's buffer once its oldest part waited this long."""
        return self.settings.linger_ms / 1000

    @property
    def max_inflight(self) -> int:
        """Unanswered batches per shard."""
        return self.settings.max_inflight

    # --- set-up ------------------------------------------------------------------------------

    def _new_partitioner(self) -> Partitioner:
        pack, assignment, config, overrides = self._partitioner_args
        return Partitioner(
            pack,
            assignment,
            config,
            overrides=overrides,
            integrity=self.settings.integrity.config(),
        )

    def _ensure_started(self) -> None:
        if self._space is not None:
            return
        self._space = asyncio.Condition()
        self._turns.changed = asyncio.Condition()
        for shard in self.shards:
            self._start_sender(shard)
        self._background.append(asyncio.create_task(self._ticker()))
        if self.settings.metrics_backend == "memory":
            self._metrics_actor = ray.get_actor(
                METRICS_ACTOR, namespace=self.settings.ray_namespace
            )
        self._notifier = notifier_handle(self.settings.ray_namespace)

    def _start_sender(self, shard: int) -> None:
        self._wake[shard] = asyncio.Event()
        self._senders[shard] = asyncio.create_task(self._sender(shard))

    def _set_shards(self, handles: dict[int, Any]) -> None:
        """Route to exactly ``handles`` from now on: new shards get a buffer, an outbox and a
        sender; shards no longer in the set lose theirs (their work was drained or is
        discarded by a recovery)."""
        for shard in [s for s in self.shards if s not in handles]:
            del self.shards[shard]
            self.buffers.pop(shard, None)
            self.outbox.pop(shard, None)
            self.inflight.pop(shard, None)
            self._wake.pop(shard, None)
            sender = self._senders.pop(shard, None)
            if sender is not None:
                sender.cancel()
        for shard, handle in handles.items():
            known = shard in self.shards
            self.shards[shard] = handle
            if known:
                continue
            self.buffers[shard] = _Buffer()
            self.outbox[shard] = deque()
            self.inflight[shard] = set()
            if self._space is not None:
                self._start_sender(shard)

    def _set_key_groups(self, assignment: Assignment) -> None:
        previous = set(self.key_groups)
        self.key_groups = Counter(assignment.owner)
        for shard in previous | set(self.key_groups):
            self.ray_metrics.key_groups.set(self.key_groups.get(shard, 0), {"shard": str(shard)})

    # --- ingest ------------------------------------------------------------------------------

    async def submit(
        self,
        lines: list[bytes],
        trace: Carrier | None = None,
        traced_events: dict[str, Carrier] | None = None,
        position: int | None = None,
        order: tuple[str, int] | None = None,
    ) -> Receipt:
        """Screen and route one batch; returns its ticket, rejections and late events.

        ``trace``: the context of the caller's ``rayworker.ingest`` span (the batch's
        ``validate`` and ``route`` spans are its children); ``traced_events``: event id ->
        the producer's context, for the events that came with a sampled one; ``position``:
        the highest stream position among the batch's entries (recoverable pipelines);
        ``order``: (the caller's submit stream, the batch's number in it, from 0), for a
        caller with several submits in flight: Ray may start an async actor's calls out of
        order (a large argument is fetched first), and this router takes them in order.
        """
        self._ensure_started()
        if order is not None:
            await self._turns.take(*order)
        try:
            return await self._route(lines, trace, traced_events, position)
        finally:
            if order is not None:
                await self._turns.done(order[0])

    async def _route(
        self,
        lines: list[bytes],
        trace: Carrier | None,
        traced_events: dict[str, Carrier] | None,
        position: int | None,
    ) -> Receipt:
        if self.scaling.running:
            await self.scaling.resumed.wait()  # a rescale is handing key groups over
        # Finished tickets ride on the receipt, which spares the caller a call per batch.
        # Taken before this ticket exists: a caller that handles receipts in order has seen
        # the receipt of every ticket listed.
        done, failed = self._take_finished()
        ticket = self._next_ticket
        self._next_ticket += 1
        if position is not None:
            self.position = max(self.position, position)
        self._since_barrier = True
        if trace is None:
            receipt = await self._submit(ticket, lines, None, None)
        else:
            with tracer().start_as_current_span(
                "rayworker.route",
                context=context_of(trace),
                attributes={"rayworker.ticket": ticket},
            ) as span:
                receipt = await self._submit(ticket, lines, carrier_of(), traced_events)
                span.set_attribute("rayworker.accepted", receipt.accepted)
        receipt.done, receipt.failed = done, failed
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
        interval = self._interval(self.next_barrier)
        interval.metrics.merge(part.metrics)
        interval.open += 1
        state = self.tickets[ticket] = _Ticket(now, Counter(part.tenants), self.next_barrier)
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
            # Nagle's rule: buffering only pays while the shard is busy (its batches then
            # grow up to flush_events); an idle shard gets the events now, not after
            # linger_ms.
            if self._idle(shard) or buffer.events >= self.flush_events:
                self._flush(shard)
        if part.alerts:
            # Integrity alerts are raised here, while screening; the ticket is done (and its
            # entries acked) only once they are persisted, like the shards' alerts.
            state.outstanding += 1
            persisting = asyncio.create_task(
                self._persist_screened(ticket, part.alerts, self.epoch)
            )
            self.finishing.add(persisting)
            persisting.add_done_callback(self._finished)
        if state.outstanding == 0:
            self._finish_ticket(ticket)
        await self._wait_for_space()
        return Receipt(ticket, part.accepted, part.rejections, part.late)

    async def _persist_screened(self, ticket: int, alerts: list[Alert], epoch: int) -> None:
        error: str | None = None
        try:
            await self._persist_alerts(alerts)
        except Exception as exc:  # noqa: BLE001 - any failure fails the ticket, never the router
            error = f"integrity_{type(exc).__name__}"
            self.errors[error] += 1
            await self._record_error(error)
        if epoch == self.epoch:
            self._part_done(ticket, error)

    def _part_done(self, ticket: int, error: str | None) -> None:
        state = self.tickets[ticket]
        if error is not None and not state.failed:
            state.failed, state.error = True, error
        state.outstanding -= 1
        if state.outstanding == 0:
            self._finish_ticket(ticket)

    async def completed(self) -> tuple[list[int], list[tuple[int, str]]]:
        """Tickets finished since the last call: (done, failed with the error of each).

        In a recoverable pipeline a ticket is *done* only once a complete checkpoint covers
        it, so its entries may be acknowledged.
        """
        return self._take_finished()

    async def wait_completed(self, timeout_s: float) -> tuple[list[int], list[tuple[int, str]]]:
        """:meth:`completed`, once a ticket is released or ``timeout_s`` passed.

        The driver waits on this while its source is quiet, so entries are acknowledged as
        soon as their alerts are persisted rather than after its next read. Returns nothing
        if a recovery is running or began meanwhile, so what it returns belongs to the epoch
        it was asked in (tickets of an abandoned epoch are the replay's).
        """
        epoch = self.epoch
        if self._recovering:
            await asyncio.sleep(timeout_s)  # a caller that asks again at once would spin
            return [], []
        if not (self.done or self.failed):
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout_s)
        if epoch != self.epoch or self._recovering:
            return [], []
        return self._take_finished()

    def _take_finished(self) -> tuple[list[int], list[tuple[int, str]]]:
        done, self.done = self.done, []
        failed, self.failed = self.failed, []
        return done, failed

    async def drain(self) -> None:
        """Flush every buffer and wait until everything sent is answered and persisted."""
        self._ensure_started()
        for shard in self.shards:
            self._flush(shard)
        while any(self.outbox.values()) or any(self.inflight.values()) or self.finishing:
            if self.failed and self.recoverable:
                return  # the caller recovers; waiting on would hang on a dead shard
            pending: list[asyncio.Future[Any]] = [*self.finishing]
            pending += [f for futures in self.inflight.values() for f in futures]
            if pending:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0.005)
        # A barrier already running when this drain began covers only the tickets before
        # it: checkpoint again until every ticket is released (bounded: a failing store
        # leaves them to the next run's replay).
        for _ in range(_QUIESCE_ATTEMPTS):
            if not (self.recoverable and self.tickets_open()) or self.failed:
                break
            await self._checkpoint_now()
        await self._send_metrics()

    def tickets_open(self) -> bool:
        """Whether any submitted ticket is not yet released to :meth:`completed`."""
        return bool(self.tickets) or any(i.open or i.done for i in self.intervals.values())

    async def finish(self) -> int:
        """End of a bounded input: drain, settle every shard, persist; returns alerts flushed."""
        await self.drain()
        outputs: list[ShardOutput] = await asyncio.gather(
            *(
                handle.flush.remote(self.epoch if self.recoverable else None)
                for handle in self.shards.values()
            )
        )
        alerts = [a for out in outputs for a in out.alerts]
        for out in outputs:
            self._interval(self.next_barrier).metrics.merge(out.metrics)
        if alerts:
            await self._persist_alerts(alerts)
        if self.recoverable:
            # The settled state is checkpointed too, which also releases the deltas above.
            await self._checkpoint_now()
        await self._send_metrics()
        return len(alerts)

    # --- internals -----------------------------------------------------------------------------

    def _notify(self, batches: list[list[Alert] | ray.ObjectRef[PackedAlerts]]) -> None:
        """Hand persisted alerts (lists, or ObjectRefs of them) to the notifier without
        waiting: it queues them, or drops and counts them when its queue is full, so
        notifying never slows this router."""
        if self._notifier is not None:
            self._notifier.enqueue_batches.remote(*batches)

    async def _persist_alerts(
        self, alerts: list[Alert] | ray.ObjectRef[PackedAlerts], trace: Carrier | None = None
    ) -> None:
        """Persist alerts (a list, or the ObjectRef of a shard's), joined with others
        waiting (:mod:`~rayworker.pipeline.group_commit`), then hand them to the notifier.
        A traced batch's alerts go alone, so their ``rayworker.persist`` span is in that
        batch's trace."""
        if trace is None:
            await self._alert_writes.submit([alerts])
            return
        await self.alert_store.call(lambda: _persist.remote(self.settings, alerts, trace))
        self._notify([alerts])

    async def _write_alerts(
        self,
        batches: list[list[Alert] | ray.ObjectRef[PackedAlerts]],
        submitted: Awaitable[int] | None = None,
    ) -> None:
        """Write batches under the store's guard, then notify. ``submitted``: the write of
        these batches already under way (:meth:`_early_write`), awaited as the first attempt;
        a retry submits the write anew."""
        first = [submitted] if submitted is not None else []

        def attempt() -> Awaitable[int]:
            return first.pop() if first else _persist_batches.remote(self.settings, *batches)

        await self.alert_store.call(attempt)
        self._notify(batches)

    def _early_write(self, alerts: ray.ObjectRef[PackedAlerts]) -> asyncio.Future[int] | None:
        """Submit the write of a batch's alerts with the batch, while the store is idle.

        Ray runs the task as soon as the shard has produced the alerts, so they are persisted
        without waiting for this router to hear the answer and then submit the write (which
        waits its turn on the router's event loop). A busy store gets joined writes instead
        (:mod:`~rayworker.pipeline.group_commit`), which cost less per alert. The upsert is
        idempotent and order-free (counts and times only grow), so an early write that
        overlaps another is safe; no more are in flight than there are shards.
        """
        if self._early_in_flight >= len(self.shards) or not self._alert_writes.idle:
            return None
        if not self.alert_store.healthy:
            return None
        write: asyncio.Future[int] = asyncio.ensure_future(
            _persist_batches.remote(self.settings, alerts)
        )
        self._early_in_flight += 1
        self.early_writes += 1
        write.add_done_callback(self._early_written)
        return write

    def _early_written(self, write: asyncio.Future[int]) -> None:
        self._early_in_flight -= 1
        if not write.cancelled():
            # Retrieved here: the write of a batch whose shard failed (it fails with the
            # shard's error) or that raised no alerts is never awaited.
            write.exception()

    def _flush(self, shard: int) -> None:
        buffer = self.buffers[shard]
        if not buffer.parts:
            return
        self.buffers[shard] = _Buffer()
        trace = None
        if buffer.traces:
            trace = BatchTrace(buffer.traces[0], buffer.traces[1:], buffer.traced_events)
        self.outbox[shard].append(
            _Outgoing(
                ShardBatch.concat(buffer.parts),
                buffer.tickets,
                self.epoch,
                self.next_barrier,
                trace,
            )
        )
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
        while True:
            await wake.wait()
            wake.clear()
            while outbox:
                if len(inflight) >= self.max_inflight:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue  # a recovery may have emptied the outbox meanwhile
                item = self._next_outgoing(outbox)
                handle = self.shards[shard]
                if item.batch is None:
                    self._send_barrier(shard, handle, item)
                    continue
                self.sent[shard] += len(item.batch)
                epoch = item.epoch if self.recoverable else None
                alerts, rest = handle.process_apart.options(num_returns=2).remote(
                    item.batch, item.trace, epoch
                )
                answer: asyncio.Future[ShardOutput] = asyncio.ensure_future(rest)
                early = None if item.trace is not None else self._early_write(alerts)
                # The slot frees when the shard answers; persisting its alerts must not hold
                # it, or the database's latency would cap detection throughput.
                inflight.add(answer)
                answer.add_done_callback(inflight.discard)
                answer.add_done_callback(functools.partial(self._answered, shard))
                finishing = asyncio.create_task(self._complete(answer, alerts, item, early))
                self.finishing.add(finishing)
                finishing.add_done_callback(self._finished)
                await self._notify_space()

    def _answered(self, shard: int, _answer: object) -> None:
        """Nagle's rule, the other half: a shard that has just gone idle gets its buffer now,
        not when the buffer's ``linger_ms`` runs out (events that arrived while the shard was
        busy would otherwise wait up to ``linger_ms`` more than they need to)."""
        buffer = self.buffers.get(shard)
        if buffer is not None and buffer.parts and self._idle(shard):
            self._flush(shard)

    def _idle(self, shard: int) -> bool:
        """Nothing of the shard's is in flight or queued (a shard removed counts as idle)."""
        return not self.inflight.get(shard) and not self.outbox.get(shard)

    @staticmethod
    def _next_outgoing(outbox: deque[_Outgoing]) -> _Outgoing:
        """The next item to send; batches queued behind a busy shard go as one.

        A shard's cost per batch is partly fixed, so a shard that falls behind catches up
        on bigger batches instead of falling further behind. Only untraced batches of one
        epoch and one checkpoint interval join (a barrier never moves)."""
        item = outbox.popleft()
        if item.batch is None or item.trace is not None:
            return item
        parts, tickets, events = [item.batch], list(item.tickets), len(item.batch)
        while outbox and events < MAX_BATCH_EVENTS:
            after = outbox[0]
            joins = after.batch is not None and after.trace is None
            if not joins or after.epoch != item.epoch or after.interval != item.interval:
                break
            outbox.popleft()
            assert after.batch is not None
            parts.append(after.batch)
            tickets.extend(after.tickets)
            events += len(after.batch)
        if len(parts) == 1:
            return item
        return _Outgoing(ShardBatch.concat(parts), tickets, item.epoch, item.interval)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.finishing.discard(task)
        if self._space is not None:
            asyncio.ensure_future(self._notify_space())  # noqa: RUF006 - short-lived, never fails

    def _send_barrier(self, shard: int, handle: Any, item: _Outgoing) -> None:
        """Checkpoint the shard behind every batch sent before, and save it from its node."""
        assert item.barrier is not None
        state = handle.checkpoint.remote(item.barrier, item.epoch)
        saved: asyncio.Future[int] = asyncio.ensure_future(
            save_checkpoint.remote(
                self.settings, shard_owner(shard), item.barrier, item.position, state
            )
        )
        self._barrier_saves.setdefault(item.barrier, []).append(saved)

    async def _complete(
        self,
        answer: asyncio.Future[ShardOutput],
        alerts: ray.ObjectRef[PackedAlerts],
        item: _Outgoing,
        early: asyncio.Future[int] | None,
    ) -> None:
        error: str | None = None
        try:
            output = await answer
            if item.epoch != self.epoch:
                return  # answered after a recovery: the replay redoes this batch
            self._interval(item.interval).metrics.merge(output.metrics)
            if output.alert_count and early is not None:
                await self._write_alerts([alerts], early)
            elif output.alert_count:
                await self._persist_alerts(alerts, output.trace)
        except Exception as exc:  # noqa: BLE001 - any failure fails the tickets, never the router
            if item.epoch != self.epoch:
                return
            error = f"shard_{type(exc).__name__}"
            self.errors[error] += 1
            _log.warning(
                "a shard batch failed; its source entries will be delivered again",
                extra={"tickets": item.tickets, "error": error, "reason": str(exc)[:500]},
            )
            await self._record_error(error)
        if item.epoch != self.epoch:
            return
        for ticket in item.tickets:
            self._part_done(ticket, error)

    def _interval(self, barrier: int) -> _Interval:
        interval = self.intervals.get(barrier)
        if interval is None:
            interval = self.intervals[barrier] = _Interval()
        return interval

    def _finish_ticket(self, ticket: int) -> None:
        state = self.tickets.pop(ticket)
        interval = self._interval(state.interval)
        interval.open -= 1
        if state.failed:
            interval.failed += 1
            self.failed.append((ticket, state.error or "failed"))
            self._released.set()
            return
        latency_ms = (time.monotonic() - state.received) * 1000
        self.batch_latency = self.batch_latency + LatencyHistogram.of([latency_ms])
        self.ray_metrics.observe(self.ray_metrics.batch_seconds, latency_ms / 1000)
        latency = interval.latency
        empty = LatencyHistogram()
        for tenant, n in state.tenants.items():
            latency[tenant] = latency.get(tenant, empty) + LatencyHistogram.repeated(latency_ms, n)
        if self.recoverable:
            interval.done.append(ticket)
        else:
            self.done.append(ticket)
            self._released.set()

    # --- checkpoints and recovery -----------------------------------------------------------

    def _router_state(self) -> dict[str, Any]:
        return {
            "partitioner": self.partitioner.snapshot(),
            "counts": dict(self.counts),
        }

    def _start_barrier(self) -> None:
        """Queue barrier ``next_barrier`` behind everything submitted so far."""
        barrier = self.next_barrier
        self.next_barrier = _rising_id(barrier)
        self._since_barrier = False
        self._last_barrier = time.monotonic()
        state = encode_state(self._router_state())
        for shard in self.shards:
            self._flush(shard)
            self.outbox[shard].append(
                _Outgoing(None, [], self.epoch, barrier, barrier=barrier, position=self.position)
            )
            self._wake[shard].set()
        self._barrier_task = asyncio.create_task(
            self._complete_barrier(barrier, self.epoch, self.position, state, len(self.shards))
        )

    async def _complete_barrier(
        self, barrier: int, epoch: int, position: int, state: bytes, shards: int
    ) -> None:
        """Once every shard's checkpoint is saved and every covered ticket persisted, write the
        router's checkpoint (marking the barrier complete), then release what it covers."""
        # A barrier that cannot finish (a save that never comes) must not hold every later
        # one back: give up on it, and the next barrier covers its tickets.
        deadline = time.monotonic() + max(_BARRIER_TIMEOUT_S, self.settings.recovery_timeout_s)
        while epoch == self.epoch and time.monotonic() < deadline:
            saves = self._barrier_saves.get(barrier, [])
            covered_open = any(i.open for b, i in self.intervals.items() if b <= barrier)
            if len(saves) == shards and all(f.done() for f in saves) and not covered_open:
                break
            if any(f.done() and f.exception() is not None for f in saves):
                break
            await asyncio.sleep(0.005)
        saves = self._barrier_saves.pop(barrier, [])
        if epoch != self.epoch:
            return
        failed: list[BaseException | str] = [
            e for f in saves if f.done() and (e := f.exception()) is not None
        ]
        if len(saves) < shards or not all(f.done() for f in saves):
            failed.append(f"{len(saves)} of {shards} shard checkpoints saved in time")
        covered = [i for b, i in self.intervals.items() if b <= barrier]
        if failed or any(i.open or i.failed for i in covered):
            # A later barrier covers these tickets; a shard that failed is recovered by then.
            self.barrier_failures += 1
            self.errors["checkpoint_failed"] += 1
            _log.warning(
                "checkpoint %d not completed: %s",
                barrier,
                failed[0] if failed else "tickets failed",
            )
            return
        self.checkpoint_bytes = sum(f.result() for f in saves) + len(state)
        held = {b: self.intervals[b] for b in sorted(self.intervals) if b <= barrier}
        try:
            await save_checkpoint.remote(self.settings, ROUTER_OWNER, barrier, position, state)
        except Exception as exc:  # noqa: BLE001 - a later barrier retries
            self.barrier_failures += 1
            self.errors[f"checkpoint_{type(exc).__name__}"] += 1
            return
        # The checkpoint is durable, so what it covers is released even if a recovery began
        # meanwhile: that recovery waits for this task and restores this very checkpoint,
        # and its replay skips what it covers.
        released = MetricDeltas()
        latency: dict[str, LatencyHistogram] = {}
        for number, interval in held.items():
            self.intervals.pop(number, None)
            released.merge(interval.metrics)
            _merge_latency(latency, interval.latency)
        if epoch == self.epoch:
            self.completed_barrier, self.completed_position = barrier, position
            for interval in held.values():
                self.done.extend(interval.done)
            self._released.set()
        await self._send_metrics(released, latency)
        # Old checkpoints left by a failed prune go at the next barrier's.
        with contextlib.suppress(Exception):
            await prune_checkpoints.remote(self.settings, barrier)

    async def _checkpoint_now(self) -> None:
        """Start a barrier (unless one is running) and wait for it (drain of a stream run)."""
        if self._barrier_task is None or self._barrier_task.done():
            self._start_barrier()
        assert self._barrier_task is not None
        await self._barrier_task

    async def recover(self) -> dict[str, Any]:
        """Restore every state holder to the latest complete checkpoint, in a new epoch.

        Returns ``{"epoch", "barrier", "position"}``: the caller replays, in stream order,
        every entry above ``position`` (and acknowledges those at or below it, which the
        checkpoint covers). Waits up to ``recovery_timeout_s`` for restarted shards.
        """
        self._ensure_started()
        # Epochs rise across router restarts too (like barrier ids, from the wall clock): a
        # call a dead router left queued at a shard can never pass for the new router's.
        self.epoch = _rising_id(self.epoch)
        epoch = self.epoch
        self._recovering = True
        try:
            return await self._recover(epoch)
        finally:
            self._recovering = False

    async def _recover(self, epoch: int) -> dict[str, Any]:
        # A barrier of the old epoch may be writing its router checkpoint: let it finish
        # (it stops by itself otherwise), so that a checkpoint it completes is the one
        # restored below, and the metrics it released are not counted again by the replay.
        pending, self._barrier_task = self._barrier_task, None
        if pending is not None and not pending.done():
            await asyncio.wait([pending], timeout=self.settings.recovery_timeout_s)
        for shard in self.shards:
            self.buffers[shard] = _Buffer()
            self.outbox[shard].clear()
        self.tickets.clear()
        self.intervals.clear()
        self.done, self.failed = [], []
        self._barrier_saves.clear()
        deadline = time.monotonic() + self.settings.recovery_timeout_s
        for attempt in range(1, _RESTORE_ATTEMPTS + 1):
            # Behind the guard: a store outage makes recovery wait, not fail.
            found = await self.alert_store.call(
                lambda: latest_checkpoint.options(retry_exceptions=False).remote(
                    self.settings, ROUTER_OWNER
                )
            )
            barrier = position = 0
            state: dict[str, Any] | None = None
            if found is not None:
                barrier, position = found.barrier, found.position
                state = decode_state(found.state)
            # The checkpoint's assignment names the shards that hold its state (a rescale
            # may have changed them since this router was created).
            self._set_shards(self._shards_of(state))
            try:
                await asyncio.gather(
                    *(self._restore_shard(shard, barrier, epoch, deadline) for shard in self.shards)
                )
                break
            except ray.exceptions.RayActorError:
                raise
            except Exception as exc:
                # A barrier of the previous epoch, still finishing, may have pruned the set
                # read above after writing a newer one: read the latest again.
                if attempt == _RESTORE_ATTEMPTS:
                    raise
                _log.warning("restore from checkpoint %d failed (%s); retrying", barrier, exc)
        self.partitioner = self._new_partitioner()
        self.counts = Counter()
        if state is not None:
            self.partitioner.restore(state["partitioner"])
            self.counts = Counter({str(k): int(v) for k, v in state["counts"].items()})
        self._set_key_groups(self.partitioner.assignment)
        self.completed_barrier = barrier
        self.completed_position = position
        self.next_barrier = _rising_id(max(barrier, self.next_barrier))
        self.position = position
        self._since_barrier = False
        self.recoveries += 1
        _log.warning(
            "recovered from checkpoint",
            extra={"epoch": epoch, "barrier": barrier, "position": position},
        )
        return {
            "epoch": epoch,
            "barrier": barrier,
            "position": position,
            "shards": sorted(self.shards),
        }

    def _shards_of(self, state: dict[str, Any] | None) -> dict[int, Any]:
        """The shard actors a router checkpoint's assignment names (None: the first set)."""
        if state is None:
            return dict(self._initial_shards)
        assignment = Assignment.from_json(state["partitioner"]["assignment"])
        handles: dict[int, Any] = {}
        for shard in assignment.shards:
            handle = self.shards.get(shard)
            if handle is None:
                try:
                    handle = ray.get_actor(shard_name(shard), namespace=self.settings.ray_namespace)
                except ValueError:
                    msg = (
                        f"the last checkpoint assigns key groups to shard {shard}, but no actor "
                        f"{shard_name(shard)!r} is running; restart the pipeline (it starts "
                        "the shards the checkpoint names) or start over with --fresh-state"
                    )
                    raise StateError(msg) from None
            handles[shard] = handle
        return handles

    # --- scaling -------------------------------------------------------------------------------

    async def assignment(self) -> dict[str, Any]:
        """The key-group assignment routed by now (:meth:`Assignment.to_json`)."""
        return self.partitioner.assignment.to_json()

    async def load(self) -> tuple[dict[str, Any], list[int]]:
        """The assignment routed by now and the event copies routed to each key group since
        this router started (:attr:`~rayworker.partition.Partitioner.load`)."""
        return self.partitioner.assignment.to_json(), self.partitioner.load.tolist()

    async def request_scale(self, shards: int) -> int:
        """Ask the driver for ``shards`` shards; returns a request number for
        :meth:`scale_result`. The driver polls :meth:`pending_scale`, starts or stops shard
        actors and calls :meth:`rescale`."""
        groups = self.partitioner.assignment.groups
        if not 1 <= shards <= groups:
            msg = f"shards: got {shards}; give 1 to {groups} (the pipeline's key groups)"
            raise ConfigError(msg)
        self.scaling.request += 1
        self.scaling.target = shards
        self.scaling.attempts = 0
        return self.scaling.request

    async def pending_scale(self) -> tuple[int, int] | None:
        """``(request, shards)`` of the latest scale request not carried out yet."""
        if self.scaling.target is None:
            return None
        return self.scaling.request, self.scaling.target

    async def scale_result(self, request: int, timeout_s: float) -> dict[str, Any] | None:
        """The outcome of scale request ``request``, waiting up to ``timeout_s`` for it."""
        deadline = time.monotonic() + timeout_s
        while request not in self.scaling.results and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self.scaling.results.get(request)

    async def scale_failed(self, request: int, error: str) -> None:
        """Record that the driver could not carry out scale request ``request``."""
        self.scaling.results[request] = {"ok": False, "error": error}
        if request == self.scaling.request:
            self.scaling.target = None

    async def rescale(
        self,
        added: dict[int, Any],
        keep: list[int],
        request: int | None = None,
        target: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Move key groups, with their state, so that shards ``keep`` plus the new ``added``
        own them all; shards not among them give theirs away (the driver stops them after).
        ``target``: the assignment to move to (a load balance,
        :class:`~rayworker.balance.LoadBalancer`), planned from the current one; without it,
        round-robin over the shards.

        Ingest pauses: every batch submitted so far is processed and checkpointed (a
        complete checkpoint also makes the hand-off safe: a crash during it recovers to the
        old assignment and replays). Each giving shard then splits the leaving key groups
        out of its state and each taking shard merges them in (:mod:`rayworker.handoff`),
        actor to actor; the router routes by the new assignment, and a checkpoint of the
        new layout completes before ingest resumes. Raises if anything fails; the driver
        then recovers, which goes back to the last complete checkpoint.
        """
        self._ensure_started()
        if self.scaling.running or self._recovering:
            msg = "a rescale or a recovery is already running; ask again when it is done"
            raise StateError(msg)
        self.scaling.running = True
        self.scaling.resumed.clear()
        started = time.monotonic()
        try:
            info = await self._rescale(added, keep, started, target)
        except Exception as exc:
            if request is not None and request == self.scaling.request:
                self.scaling.attempts += 1
                if self.scaling.attempts >= _SCALE_ATTEMPTS:
                    error = f"failed {self.scaling.attempts} times, last: {exc}"
                    self.scaling.results[request] = {"ok": False, "error": error[:500]}
                    self.scaling.target = None
            raise
        finally:
            self.scaling.running = False
            self.scaling.resumed.set()
        self.scaling.done += 1
        if request is not None:
            self.scaling.results[request] = info
            if request == self.scaling.request:
                self.scaling.target = None
        _log.warning("rescaled", extra=info)
        return info

    async def _quiesce(self) -> None:
        """Process, persist and checkpoint everything submitted so far (ingest is paused)."""
        for _ in range(_QUIESCE_ATTEMPTS):
            await self.drain()
            if self._barrier_task is not None and not self._barrier_task.done():
                await self._barrier_task
            if self.failed:
                msg = (
                    f"{len(self.failed)} batches failed before the hand-off "
                    f"({self.failed[0][1]}); the driver recovers, then the rescale is retried"
                )
                raise StateError(msg)
            if not self.recoverable or not self.tickets_open():
                return
            # The barrier that ran was started before the last tickets: checkpoint them too.
            self._start_barrier()
            assert self._barrier_task is not None
            await self._barrier_task
        msg = "tickets stayed open through several checkpoints before the hand-off"
        raise StateError(msg)

    async def _rescale(
        self,
        added: dict[int, Any],
        keep: list[int],
        started: float,
        target: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        epoch = self.epoch
        await self._quiesce()
        paused = time.monotonic()
        old = self.partitioner.assignment
        handles = {**self.shards, **added}
        if target is None:
            new = old.rebalance(sorted(set(keep) | set(added)))
        else:
            new = self._planned(old, Assignment.from_json(target), set(handles))
        moves = old.moves(new)
        # Shards of a pipeline without checkpoints hold no epoch (None skips the check).
        shard_epoch = epoch if self.recoverable else None
        if self.recoverable:
            await asyncio.gather(*(h.restore_state.remote(None, epoch) for h in added.values()))
        by_giver: dict[int, dict[int, list[int]]] = {}
        for group, (giver, taker) in moves.items():
            by_giver.setdefault(giver, {}).setdefault(taker, []).append(group)
        incoming: dict[int, list[Any]] = {}
        for giver, per_taker in by_giver.items():
            takers = sorted(per_taker)
            # One return value per taker, so each state goes from giver to taker directly.
            refs = (
                handles[giver]
                .export_groups.options(num_returns=len(takers))
                .remote([per_taker[t] for t in takers], old.groups, shard_epoch)
            )
            refs = refs if len(takers) > 1 else [refs]
            for taker, ref in zip(takers, refs, strict=True):
                incoming.setdefault(taker, []).append(ref)
        await asyncio.gather(
            *(handles[taker].adopt.remote(shard_epoch, *refs) for taker, refs in incoming.items())
        )
        if epoch != self.epoch:
            msg = "a recovery ran during the hand-off; the rescale is abandoned"
            raise StateError(msg)
        removed = sorted(s for s in self.shards if s not in new.shards)
        self._set_shards({s: handles[s] for s in new.shards})
        self.partitioner.reassign(new)
        self._set_key_groups(new)
        handed = time.monotonic()
        if self.recoverable:
            barrier = self.next_barrier
            self._start_barrier()
            assert self._barrier_task is not None
            await self._barrier_task
            if self.completed_barrier < barrier:
                msg = f"the checkpoint of the new layout (barrier {barrier}) did not complete"
                raise StateError(msg)
        return {
            "ok": True,
            "shards": sorted(new.shards),
            "added": sorted(added),
            "removed": removed,
            "moved_key_groups": len(moves),
            "assignment_version": new.version,
            "drain_s": round(paused - started, 3),
            "handoff_s": round(handed - paused, 3),
            "checkpoint_s": round(time.monotonic() - handed, 3),
            "paused_s": round(time.monotonic() - started, 3),
        }

    @staticmethod
    def _planned(old: Assignment, new: Assignment, shards: set[int]) -> Assignment:
        """``new``, if it was planned from ``old`` and names only running shards."""
        if new.version != old.version + 1 or new.groups != old.groups:
            msg = (
                f"the planned assignment (version {new.version}) was not made from the "
                f"current one (version {old.version}); plan again from the current load"
            )
            raise StateError(msg)
        unknown = sorted(set(new.shards) - shards)
        if unknown:
            msg = f"the planned assignment names shards {unknown} that are not running"
            raise StateError(msg)
        return new

    async def _watch_shards(self, epoch: int) -> None:
        """Report a shard that restarted (or died) while no batch went to it: without this,
        an idle shard's lost state would only be noticed with its next batch."""
        if self._recovering:
            # The shards are being restored into ``epoch``: one not restored yet answers
            # None, and the recovery may be over when that answer is judged, which made a
            # healthy shard count as restarted and forced a second recovery.
            return
        calls = {s: h.current_epoch.remote() for s, h in self.shards.items()}
        for shard, call in calls.items():
            try:
                seen = await asyncio.wait_for(call, _PING_TIMEOUT_S)
            except TimeoutError:
                continue  # busy with a long batch: not a restart
            except Exception as exc:  # noqa: BLE001 - dead or restarting
                seen = f"unreachable ({type(exc).__name__})"
            if shard not in self.shards or self.scaling.running:
                continue  # handed its key groups over (and stopped) meanwhile
            if epoch == self.epoch and not self._recovering and seen != epoch:
                self.errors["shard_restarted"] += 1
                self.failed.append((-1, f"shard {shard} restarted (state epoch {seen})"))
                self._released.set()
                return

    async def _restore_shard(self, shard: int, barrier: int, epoch: int, deadline: float) -> None:
        handle = self.shards[shard]
        state: bytes | None = None
        if barrier:
            state = await self.alert_store.call(
                lambda: _load_state.remote(self.settings, shard_owner(shard), barrier)
            )
        while True:
            try:
                await handle.restore_state.remote(state, epoch)
                return
            except ray.exceptions.RayActorError:
                # Restarting (Ray re-creates it, on another node if its node is gone).
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(_RESTORE_RETRY_S)

    async def _ticker(self) -> None:
        """Flush buffers that lingered too long; send metrics about once a second."""
        interval = max(self.linger_s / 2, 0.002)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for shard, buffer in self.buffers.items():
                if buffer.parts and now - buffer.oldest >= self.linger_s:
                    self._flush(shard)
            watch_due = self.recoverable and now - self._watched_at >= _WATCH_EVERY_S
            if watch_due and (self._watch is None or self._watch.done()):
                self._watched_at = now
                self._watch = asyncio.create_task(self._watch_shards(self.epoch))
            if self.recoverable:
                due = now - self._last_barrier >= self.settings.checkpoint_interval_s
                idle = self._barrier_task is None or self._barrier_task.done()
                # Also after a failed barrier: what it covered waits for the next one.
                wanted = self._since_barrier or self.intervals
                # Never during a recovery: it clears the outboxes a barrier would queue into
                # (and its shards are not restored yet), so that barrier could never finish.
                quiet = not self.scaling.running and not self._recovering
                if due and idle and wanted and quiet:
                    self._start_barrier()
            elif now - self._last_metrics >= _METRICS_EVERY_S:
                await self._send_metrics()

    async def _send_metrics(
        self,
        deltas: MetricDeltas | None = None,
        latency: dict[str, LatencyHistogram] | None = None,
    ) -> None:
        """Send metric deltas: the given ones (a completed barrier's), else everything
        pending (a pipeline without checkpoints)."""
        # One send at a time: finish() must not return while the ticker's send is still in
        # flight, or stopping the router right after would lose those counts.
        async with self._metrics_lock:
            self._last_metrics = time.monotonic()
            if deltas is None:
                deltas, latency = MetricDeltas(), {}
                if not self.recoverable:
                    for interval in self.intervals.values():
                        deltas.merge(interval.metrics)
                        interval.metrics = MetricDeltas()
                        _merge_latency(latency, interval.latency)
                        interval.latency = {}
                    for number in [b for b, i in self.intervals.items() if not i.open]:
                        del self.intervals[number]
            latency = latency or {}
            if not latency and deltas.is_empty():
                return
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
            "alert_writes": self._alert_writes.writes,
            "early_alert_writes": self.early_writes,
            "open_tickets": len(self.tickets),
            "epoch": self.epoch,
            "recovering": self._recovering,
            "recoveries": self.recoveries,
            "rescales": self.scaling.done,
            "scaling": self.scaling.running,
            "shards": sorted(self.shards),
            "assignment_version": self.partitioner.assignment.version,
            "completed_barrier": self.completed_barrier,
            "completed_position": self.completed_position,
            "barrier_failures": self.barrier_failures,
            "checkpoint_bytes": self.checkpoint_bytes,
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
                queued = len(self.outbox.get(shard, ()))
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
        guard = self.alert_store.state()
        shards["alert-store"] = {"status": guard.status, "message": guard.reason}
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


# The guard retries store errors with backoff; Ray retrying them too would multiply attempts.
# Ray still re-runs a task whose worker died (persisting is idempotent).
_persist = persist_alerts.options(retry_exceptions=False)
_persist_batches = persist_alert_batches.options(retry_exceptions=False)
_load_state = load_checkpoint_state.options(retry_exceptions=False)


def _merge_latency(into: dict[str, LatencyHistogram], latency: dict[str, LatencyHistogram]) -> None:
    for tenant, histogram in latency.items():
        held = into.get(tenant)
        into[tenant] = histogram if held is None else held + histogram


def _rising_id(after: int) -> int:
    """An id above ``after`` and at least the wall clock in milliseconds (barrier ids and
    recovery epochs: they keep rising across restarts without being stored)."""
    return max(after + 1, time.time_ns() // 1_000_000)


def start_router(
    settings: Settings,
    pack: RulePack,
    config: DetectorConfig,
    assignment: Assignment,
    shards: dict[int, Any],
    overrides: Overrides | None = None,
    recoverable: bool = False,
) -> Any:
    """Start the router as a named async actor.

    ``recoverable``: Ray restarts it whenever it dies; the driver then calls :meth:`Router.
    recover`, which restores it (and every shard) from the latest complete checkpoint. Calls
    are never retried by Ray: the driver replays from the stream instead.
    """
    remote_cls = ray.remote(Router)
    return remote_cls.options(
        name=ROUTER_NAME,
        namespace=settings.ray_namespace,
        num_cpus=0.5,
        max_concurrency=64,
        max_restarts=-1 if recoverable else 0,
        max_task_retries=0,
    ).remote(settings, pack, config, assignment, shards, overrides, recoverable)
