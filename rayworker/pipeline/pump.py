"""The driver's feed loop: source batches in, acknowledgements and dead letters out.

:class:`Pump` submits each source batch to the router, dead-letters what the router rejects,
and acknowledges a batch only once the router reports it done: on the receipts of later
submits, and from an acknowledger task that waits on the router meanwhile
(:meth:`~rayworker.pipeline.router.Router.wait_completed`), so that an acknowledgement never
waits for the next read of a quiet source. In a recoverable pipeline it
also recovers: on any failure (a shard or the router died, a batch raised) it has the router
restore the last complete checkpoint and replays the stream from there, keeping each entry's
failures so that an entry that keeps failing alone is dead-lettered as poison instead of
blocking the stream. Between batches it carries out scale requests (``rayworker scale``, or
the lag-driven :class:`~rayworker.autoscale.Autoscaler` when enabled): the pipeline's
:meth:`~rayworker.pipeline.app.Pipeline.rescale` hands key groups over while ingest waits. The
:class:`~rayworker.balance.LoadBalancer` moves key groups between the same shards the same way
when the routed load is uneven.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray

from rayworker.autoscale import Autoscaler
from rayworker.balance import LoadBalancer
from rayworker.detect import LateEvent
from rayworker.errors import ConfigError
from rayworker.events import Rejection
from rayworker.ingest.redis_streams import IngestError, StreamConsumer
from rayworker.pipeline.router import Receipt
from rayworker.routing import Assignment
from rayworker.telemetry.propagation import Carrier

__all__ = [
    "Ack",
    "Batch",
    "DeadLetter",
    "Lag",
    "Pump",
    "PumpStats",
    "Replay",
    "consumer_lag",
]

_log = logging.getLogger("rayworker.pump")
SUBMITS_IN_FLIGHT = 2
"""Batches submitted to the router before the driver waits for the oldest receipt: enough
for the router to screen one while the driver reads the next."""
_SCALE_POLL_S = 1.0
"""How often the pump asks the router for a scale request (``rayworker scale``)."""
_ACK_WAIT_S = 0.25
"""How long one wait for finished tickets lasts (:meth:`Router.wait_completed`); bounds how
long the end of a run waits for the acknowledger to stop."""

Ack = Callable[[Sequence[Any]], Awaitable[None]]
DeadLetter = Callable[[Sequence[Rejection], Sequence[LateEvent], "Batch"], Awaitable[None]]
"""Writes a batch's rejected and late events to the dead letters."""
Replay = Callable[[int, Mapping[str, list[str]]], AsyncIterator["Batch"]]
"""Replays a recoverable source after a recovery: given the checkpoint's position and the
errors each entry has failed with so far, yields every unacknowledged entry above the
position in stream order (entries that failed before come alone, ``isolated``; entries that
failed ``poison_attempts`` times are dead-lettered instead) and acknowledges those at or
below it."""
Lag = Callable[[], Awaitable[int | None]]
"""The source's consumer lag in entries (None: unknown), for the autoscaler."""


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
    owners: list[str] | None = None
    """The source entry of each line, where the source has entries (dead letters name it)."""
    isolated: bool = False
    """Submit alone and wait for the outcome: the entry failed before, and only alone does
    another failure say that this entry is the cause."""


@dataclass(slots=True)
class PumpStats:
    """What :meth:`Pump.run` moved."""

    events: int = 0
    accepted: int = 0
    rejected: int = 0
    late: int = 0
    acked: int = 0
    failed: int = 0
    recoveries: int = 0
    rescales: int = 0
    rebalances: int = 0
    """Load balances that moved key groups (:class:`~rayworker.balance.LoadBalancer`)."""
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second so far."""
        elapsed = self.elapsed_s or (time.perf_counter() - self.started)
        return self.events / elapsed if elapsed > 0 else 0.0


class Driver(Protocol):
    """What the pump needs of :class:`~rayworker.pipeline.app.Pipeline`."""

    router: Any
    recoverable: bool
    tracing: bool
    shards: dict[int, Any]

    async def traced_submit(
        self, batch: Batch, order: tuple[str, int] | None = None
    ) -> tuple[Receipt, Carrier | None]: ...

    async def traced_ack(
        self, ack: Ack, acks: list[Any], tickets: list[int], carriers: list[Carrier]
    ) -> None: ...

    async def recover(self) -> dict[str, Any]: ...

    async def rescale(self, shards: int, request: int | None = None) -> dict[str, Any]: ...

    async def rebalance(self, assignment: Assignment) -> dict[str, Any]: ...


def blames(error: str, isolated: bool) -> bool:
    """Whether a failed ticket's error counts against its entries (towards poison).

    A batch that raised did so on its contents. A shard that died, restarted or was
    recovered says nothing about the entries it happened to hold, unless it held only one.
    """
    if "StaleEpoch" in error or "restarted" in error:
        return False
    if "RayTaskError" in error:
        return True
    return isolated


class Pump:
    """One run of the feed loop; see the module docstring."""

    def __init__(
        self,
        driver: Driver,
        *,
        ack: Ack | None = None,
        dead_letter: DeadLetter | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[PumpStats], None] | None = None,
        replay: Replay | None = None,
        autoscaler: Autoscaler | None = None,
        lag: Lag | None = None,
        balancer: LoadBalancer | None = None,
    ) -> None:
        if driver.recoverable and replay is None:
            msg = "a recoverable pipeline needs a source that can replay (a Redis Stream)"
            raise ConfigError(msg)
        self.driver = driver
        self.ack = ack
        self.dead_letter = dead_letter
        self.stop = stop
        self.on_progress = on_progress
        self.replay = replay
        self.autoscaler = autoscaler if lag is not None else None
        self.lag = lag
        self.balancer = balancer
        self.stats = PumpStats()
        self.tokens: dict[int, Any] = {}
        self.traces: dict[int, Carrier] = {}
        self.failures: dict[str, list[str]] = {}
        self.isolated: set[int] = set()
        self._scale_checked = time.monotonic()
        self._lag_checked = time.monotonic()
        self._load_checked = time.monotonic()
        self.in_flight: deque[tuple[Batch, Awaitable[Any]]] = deque()
        """Submitted batches whose receipts were not taken yet, oldest first."""
        self._submits = uuid.uuid4().hex
        """This pump's submit stream (a new one after each recovery), numbered from 0."""
        self._submitted = 0
        self._early: dict[int, str | None] = {}
        """Tickets heard of as finished before their receipt was taken (the acknowledger
        can hear of one before the feed loop does): None if done, else the error."""
        self._received_upto = -1
        """The highest ticket whose receipt was taken since the last recovery."""
        self._recovering = False
        self._generation = 0
        """Grows when a recovery begins: failures heard of before it are replayed by it."""
        self._failed_meanwhile = False
        self._ack_error: Exception | None = None
        self._sent = asyncio.Event()
        self._acking = True
        self._receiving = asyncio.Lock()

    async def run(self, batches: AsyncIterator[Batch], *, bounded: bool = False) -> PumpStats:
        """Feed batches until the source ends or ``stop`` is set; then drain.

        ``bounded``: the source is finite (a file), so once it ends every shard settles what
        is pending, as ``rayworker replay`` does at the end of its input. A recoverable
        pipeline recovers (and replays) before the first batch, which resumes from the last
        checkpoint of an earlier run, and after any failure.
        """
        router = self.driver.router
        if self.driver.recoverable:
            await self._recover()
        acknowledger = asyncio.create_task(self._acknowledge())
        try:
            await self._feed_all(batches)
        finally:
            self._acking = False
            self._sent.set()
            await acknowledger
        try:
            received = await self._receive_all()
        except ray.exceptions.RayActorError:
            received = False  # the router died holding the last receipts
        if bounded:
            await router.finish.remote()
        elif self.driver.recoverable:
            if not received:
                # A failed ticket's entries are still pending: replay them before draining.
                await self._recover()
            while True:
                try:
                    await router.drain.remote()
                    if await self._settle():
                        break
                except ray.exceptions.RayActorError:
                    pass
                await self._recover()
        else:
            await router.drain.remote()
        await self._settle()
        self.stats.elapsed_s = time.perf_counter() - self.stats.started
        return self.stats

    async def _feed_all(self, batches: AsyncIterator[Batch]) -> None:
        async for batch in batches:
            fed = await self._feed(batch)
            if self._ack_error is not None:
                raise self._ack_error
            if self._failed_meanwhile:  # the acknowledger heard of a failed ticket
                self._failed_meanwhile, fed = False, False
            if not self.driver.recoverable:
                await self._maybe_rescale()
            elif not fed or not await self._maybe_rescale():
                await self._recover()
            if self.on_progress is not None:
                self.on_progress(self.stats)
            if self.stop is not None and self.stop.is_set():
                break

    async def _acknowledge(self) -> None:
        """Acknowledge tickets as they finish, while the feed loop waits on its source.

        Without this a finished ticket waits for the feed loop's next read (up to
        ``block_ms``) to be acknowledged. The router answers a wait with nothing when a
        recovery began during it, so what it hands out belongs to the epoch it was asked in.
        """
        router = self.driver.router
        while self._acking:
            if self._recovering or not (self.tokens or self.in_flight):
                self._sent.clear()
                await self._sent.wait()
                continue
            generation = self._generation
            try:
                done, failed = await router.wait_completed.remote(_ACK_WAIT_S)
            except ray.exceptions.RayError:
                await asyncio.sleep(_ACK_WAIT_S)  # the feed loop notices and recovers
                continue
            if generation != self._generation:
                # A recovery began meanwhile, which replays the failed tickets' entries.
                # Done tickets stay: the router hands each out once, so dropping them would
                # leave their entries pending (done means stored, and checkpointed).
                failed = []
            try:
                ok = await self._finished(done, failed)
                # A ticket that finished before the feed loop took its receipt: take the
                # receipts (already answered: a ticket finishes after its routing) now.
                while ok and self._early and self.in_flight and not self._recovering:
                    ok = await self._receive()
                if not ok:
                    self._failed_meanwhile = True
            except ray.exceptions.RayError:
                self._failed_meanwhile = True  # the router died holding receipts
            except Exception as exc:  # noqa: BLE001 - the feed loop raises it, as its own acks do
                self._ack_error = exc
                return

    async def _settle(self) -> bool:
        """Acknowledge what finished; False if something failed (recover, then)."""
        done, failed = await self.driver.router.completed.remote()
        return await self._finished(done, failed)

    async def _finished(self, done: list[int], failed: list[tuple[int, str]]) -> bool:
        """Acknowledge the finished tickets and forget the failed ones (their entries are
        delivered again); False if any failed."""
        # A ticket above the last receipt taken finished before its receipt arrived:
        # :meth:`_receive` settles it then.
        for t in done:
            if t > self._received_upto:
                self._early[t] = None
        for t, error in failed:
            if t > self._received_upto:
                self._early[t] = error
        done = [t for t in done if t <= self._received_upto]
        failed = [(t, e) for t, e in failed if t <= self._received_upto]
        acked = [t for t in done if self.tokens.get(t) is not None]
        acks = [self.tokens.pop(t) for t in done if t in self.tokens]
        acks = [a for a in acks if a is not None]
        for t, error in failed:
            token = self.tokens.pop(t, None)
            self.traces.pop(t, None)
            blamed = blames(error, t in self.isolated)
            _log.warning("a batch failed (ticket %d): %s", t, error)
            if self.driver.recoverable and token is not None and blamed:
                for entry in token:
                    self.failures.setdefault(entry, []).append(error)
            self.isolated.discard(t)
        self.stats.failed += len(failed)
        carriers = [c for t in done if (c := self.traces.pop(t, None)) is not None]
        if acks and self.ack is not None:
            if carriers:
                await self.driver.traced_ack(self.ack, acks, acked, carriers)
            else:
                await self.ack(acks)
            self.stats.acked += len(acks)
        return not failed

    def _send(self, batch: Batch) -> None:
        """Submit a batch without waiting for its receipt (:meth:`_receive` takes it)."""
        order = (self._submits, self._submitted)
        self._submitted += 1
        if self.driver.tracing:
            sent: Awaitable[Any] = asyncio.ensure_future(self.driver.traced_submit(batch, order))
        else:
            sent = self.driver.router.submit.remote(batch.lines, None, None, batch.position, order)
        self.in_flight.append((batch, sent))
        self._sent.set()

    async def _receive(self) -> bool:
        """Take the oldest receipt: dead-letter its rejects, remember its token and
        acknowledge the tickets it reports finished; False if any failed. One at a time
        (the feed loop and the acknowledger both take receipts), so in read order."""
        async with self._receiving:
            if not self.in_flight:
                return True
            return await self._take_receipt(*self.in_flight.popleft())

    async def _take_receipt(self, batch: Batch, sent: Awaitable[Any]) -> bool:
        if self.driver.tracing:
            receipt, carrier = await sent
            if carrier is not None:
                self.traces[receipt.ticket] = carrier
        else:
            receipt = await sent
        stats = self.stats
        stats.events += len(batch.lines)
        stats.accepted += receipt.accepted
        stats.rejected += len(receipt.rejections)
        stats.late += len(receipt.late)
        if self.dead_letter is not None and (receipt.rejections or receipt.late):
            await self.dead_letter(receipt.rejections, receipt.late, batch)
        self.tokens[receipt.ticket] = batch.token
        self._received_upto = max(self._received_upto, receipt.ticket)
        if batch.isolated:
            self.isolated.add(receipt.ticket)
        done, failed = list(receipt.done), list(receipt.failed)
        if receipt.ticket in self._early:
            error = self._early.pop(receipt.ticket)
            if error is None:
                done.append(receipt.ticket)
            else:
                failed.append((receipt.ticket, error))
        return await self._finished(done, failed)

    async def _receive_all(self) -> bool:
        """Take every outstanding receipt; False if any reported a failure."""
        ok = True
        while self.in_flight:
            ok = await self._receive() and ok
        return ok

    async def _feed(self, batch: Batch) -> bool:
        """Submit one batch and acknowledge what finished; False: something failed (a
        recoverable pipeline recovers then).

        Up to :data:`SUBMITS_IN_FLIGHT` batches await their receipts, so the router screens
        one batch while this driver reads the next from the source. An empty batch (an idle
        source) takes every receipt and asks the router what finished; an isolated one is
        submitted alone and waited for."""
        try:
            if not batch.lines or batch.isolated:
                ok = await self._receive_all()
                if batch.lines:
                    self._send(batch)
                    ok = await self._receive_all() and ok
                    await self.driver.router.drain.remote()
                return await self._settle() and ok
            self._send(batch)
            ok = True
            while len(self.in_flight) > SUBMITS_IN_FLIGHT:
                ok = await self._receive() and ok
            return ok
        except ray.exceptions.RayActorError:
            return False  # the router died; Ray restarts it

    async def _recover(self) -> None:
        """Restore from the last checkpoint and replay until a replay gets through."""
        assert self.replay is not None
        self._recovering = True
        self._generation += 1
        self._failed_meanwhile = False  # this recovery replays those tickets too
        try:
            await self._recover_and_replay(self.replay)
        finally:
            self._recovering = False
            self._sent.set()

    async def _recover_and_replay(self, replay: Replay) -> None:
        while True:
            # Receipts still on their way belong to the epoch being abandoned (their
            # tickets never finish); the replay submits their entries again.
            async with self._receiving:
                outstanding = [sent for _, sent in self.in_flight]
                self.in_flight.clear()
            await asyncio.gather(*outstanding, return_exceptions=True)
            self._submits, self._submitted = uuid.uuid4().hex, 0
            info = await self.driver.recover()
            self.tokens.clear()
            self.isolated.clear()
            self.traces.clear()
            self._early.clear()
            self._received_upto = -1
            self.stats.recoveries += 1
            replayed = True
            async for batch in replay(info["position"], self.failures):
                if not await self._feed(batch):
                    replayed = False
                    break
            if replayed:
                return

    async def _maybe_rescale(self) -> bool:
        """Carry out a pending scale request or an autoscaling decision; False if the
        hand-off failed (the caller recovers, which goes back to the old layout)."""
        now = time.monotonic()
        request: int | None = None
        target: int | None = None
        if now - self._scale_checked >= _SCALE_POLL_S:
            self._scale_checked = now
            try:
                pending = await self.driver.router.pending_scale.remote()
            except ray.exceptions.RayActorError:
                return False
            if pending is not None:
                request, target = pending
        scaler, lag = self.autoscaler, self.lag
        due = scaler is not None and now - self._lag_checked >= scaler.policy.check_every_s
        if target is None and due and scaler is not None and lag is not None:
            self._lag_checked = now
            target = scaler.observe(now, await lag(), len(self.driver.shards))
        if target is None:
            return await self._maybe_rebalance()
        try:
            if not await self._receive_all():
                return False
            info = await self.driver.rescale(target, request)
        except (ray.exceptions.RayError, ConfigError) as exc:
            _log.warning("rescale to %d shards failed: %s", target, exc)
            return False
        if self.autoscaler is not None:
            self.autoscaler.changed(time.monotonic())
        if info.get("moved_key_groups"):
            self.stats.rescales += 1
        return await self._settle()

    async def _maybe_rebalance(self) -> bool:
        """Hand key groups over when the balancer finds the shards' load uneven; False if
        the hand-off failed (the caller recovers, which goes back to the old layout)."""
        balancer, now = self.balancer, time.monotonic()
        if balancer is None or now - self._load_checked < balancer.policy.check_every_s:
            return True
        self._load_checked = now
        try:
            layout, load = await self.driver.router.load.remote()
        except ray.exceptions.RayActorError:
            return False
        planned = balancer.observe(now, Assignment.from_json(layout), load)
        if planned is None:
            return True
        try:
            if not await self._receive_all():
                return False
            info = await self.driver.rebalance(planned)
        except ray.exceptions.RayError as exc:
            _log.warning("load balance failed: %s", exc)
            return False
        balancer.changed(time.monotonic(), load)
        last = balancer.last
        _log.warning(
            "balanced shard load: max/mean %.2f -> %.2f over %d event copies; %s key groups "
            "moved, ingest paused %s s",
            last["imbalance"],
            last["planned"],
            last["events"],
            info.get("moved_key_groups"),
            info.get("paused_s"),
        )
        if info.get("moved_key_groups"):
            self.stats.rebalances += 1
        return await self._settle()


def consumer_lag(consumer: StreamConsumer) -> Lag:
    """The :data:`Lag` of a stream consumer's group (None while Redis cannot tell)."""

    async def read() -> int | None:
        try:
            return (await consumer.lag()).total
        except IngestError:
            return None

    return read
