"""The notifier engine: a bounded queue in, the dispatcher in the middle, deliveries out.

:meth:`Notifier.enqueue` only puts a batch on a bounded queue and returns; when the queue is
full the batch is dropped and counted, so notification work can never slow detection or
persistence down. A loop ticks every ``tick``: it routes queued alerts, re-reads silences
every ``silence_refresh``, flushes due groups and starts one delivery task per notification
(each receiver limits its own concurrency). :meth:`Notifier.drain` stops taking alerts,
flushes every group at once, waits for deliveries up to a deadline and dead-letters what is
still undelivered (reason ``shutdown``), so a stop loses nothing silently.

This module runs anywhere asyncio runs; :mod:`rayworker.pipeline.notifier` wraps it in a
Ray actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import httpx

from rayworker.alerts import Alert
from rayworker.clock import Clock, SystemClock
from rayworker.notify.config import NotifyConfig
from rayworker.notify.dead_letters import DeadLetterSink, dead_letter_sink
from rayworker.notify.delivery import Deliverer
from rayworker.notify.dispatch import Dispatcher
from rayworker.notify.model import Notification, epoch_s
from rayworker.notify.receivers import Sender, build_sender
from rayworker.notify.silences import Silence, Silences

__all__ = ["Notifier", "SilenceSource"]

log = logging.getLogger("rayworker.notify")
_GC_EVERY_S = 60.0


class SilenceSource(Protocol):
    """Where the notifier reads silences from (the alert database)."""

    async def current(self, now: float) -> list[Silence]:
        """Every silence not yet expired, of every tenant."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class Notifier:
    """See the module docstring."""

    def __init__(
        self,
        config: NotifyConfig,
        *,
        clock: Clock | None = None,
        dead_letters: DeadLetterSink | None = None,
        silence_source: SilenceSource | None = None,
        senders: Callable[[str, str], Sender] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.dead_letters = dead_letters or dead_letter_sink(config.dead_letter)
        self.silence_source = silence_source
        self.dispatcher = Dispatcher(config, Silences())
        self._client: httpx.AsyncClient | None = None
        self._senders: dict[tuple[str, str], Sender] = {}
        self._custom_senders = senders
        self.deliverer = Deliverer(config, self._sender, self.dead_letters, self.clock)
        self._queue: asyncio.Queue[list[dict[str, Any] | Alert]] = asyncio.Queue(
            maxsize=config.queue_size
        )
        self._inflight: dict[asyncio.Task[None], Notification] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_silences = float("-inf")
        self._last_gc = float("-inf")
        self.dropped: Counter[str] = Counter()
        self.silence_errors = 0

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop (idempotent)."""
        if self._loop_task is not None:
            return
        if self._custom_senders is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        await self._refresh_silences(self._now(), force=True)
        self._loop_task = asyncio.create_task(self._run())

    def _now(self) -> float:
        return epoch_s(self.clock.now())

    def _sender(self, tenant: str, receiver: str) -> Sender:
        if self._custom_senders is not None:
            return self._custom_senders(tenant, receiver)
        key = (tenant, receiver)
        found = self._senders.get(key)
        if found is None:
            tenant_config = self.config.for_tenant(tenant)
            if tenant_config is None or self._client is None:
                msg = f"no receiver {receiver} for tenant {tenant}; is the notifier started?"
                raise RuntimeError(msg)
            config = tenant_config.receiver(receiver)
            timeout = self.config.delivery_for(config).timeout
            found = self._senders[key] = build_sender(config, self._client, timeout)
        return found

    # --- input -------------------------------------------------------------------------------

    def enqueue(self, alerts: Sequence[dict[str, Any] | Alert]) -> bool:
        """Queue a batch of persisted alerts; False (dropped and counted) when full."""
        if not alerts:
            return True
        if self._closing:
            self._drop(alerts, "closing")
            return False
        try:
            self._queue.put_nowait(list(alerts))
        except asyncio.QueueFull:
            self._drop(alerts, "queue_full")
            return False
        return True

    def _drop(self, alerts: Iterable[dict[str, Any] | Alert], why: str) -> None:
        for alert in alerts:
            tenant = alert.tenant_id if isinstance(alert, Alert) else str(alert.get("tenant_id"))
            self.dropped[tenant] += 1
        log.warning("notifier dropped a batch of alerts (%s)", why)

    def _take_queued(self, now: float) -> None:
        while True:
            try:
                batch = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self.dispatcher.ingest(batch, now)

    # --- loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("notifier step failed; continuing")
            await asyncio.sleep(self.config.tick)

    async def step(self) -> None:
        """One turn of the loop: route queued alerts, refresh silences, flush due groups."""
        now = self._now()
        await self._refresh_silences(now)
        self._take_queued(now)
        for n in self.dispatcher.due(now):
            self._spawn(n)
        if now - self._last_gc >= _GC_EVERY_S:
            self._last_gc = now
            self.dispatcher.gc(now)
            self.dispatcher.silences.gc(now)

    def _spawn(self, n: Notification) -> None:
        task = asyncio.create_task(self._deliver(n))
        self._inflight[task] = n
        task.add_done_callback(self._inflight.pop)

    async def _deliver(self, n: Notification) -> None:
        ok = False
        try:
            ok = await self.deliverer.deliver(n)
        except Exception:
            # A bug in a sender must not leave the group waiting forever: count and go on.
            log.exception("delivery to %s of tenant %s crashed", n.receiver, n.tenant)
            await self.deliverer.dead_letter(n, None, 0, reason="crashed")
        finally:
            self.dispatcher.complete(n, ok=ok, now=self._now())

    async def _refresh_silences(self, now: float, *, force: bool = False) -> None:
        if self.silence_source is None:
            return
        if not force and now - self._last_silences < self.config.silence_refresh:
            return
        self._last_silences = now
        try:
            current = await self.silence_source.current(now)
        except Exception as exc:  # noqa: BLE001 - keep the last silences; never stop notifying
            self.silence_errors += 1
            log.warning("could not read silences (%s); keeping the last ones", type(exc).__name__)
            return
        self.dispatcher.silences.replace_all(current)

    async def drain(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Stop taking alerts, flush every group, wait for deliveries (up to ``timeout_s``),
        dead-letter what is left, and release connections. Returns :meth:`stats`."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        now = self._now()
        self._take_queued(now)
        for n in self.dispatcher.flush_all(now):
            self._spawn(n)
        pending = list(self._inflight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                left = self._inflight.get(task)
                task.cancel()
                if left is not None:
                    await self.deliverer.dead_letter(left, None, 0)
            if late:
                await asyncio.wait(late)
        if self._client is not None:
            await self._client.aclose()
        await self.dead_letters.close()
        if self.silence_source is not None:
            await self.silence_source.close()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Queue, routing, grouping and delivery counters."""
        return {
            "queued": self._queue.qsize(),
            "queue_size": self.config.queue_size,
            "dropped": dict(self.dropped),
            "dispatch": dict(self.dispatcher.counts),
            "groups": len(self.dispatcher.groups),
            "in_flight": len(self._inflight),
            "silences": len(self.dispatcher.silences.snapshot()),
            "silence_errors": self.silence_errors,
            "receivers": self.deliverer.stats(),
        }
