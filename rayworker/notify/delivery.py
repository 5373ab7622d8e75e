"""At-least-once delivery: timeouts, retries with exponential backoff and jitter, a circuit
breaker per receiver, and dead letters for what still fails.

Retries use tenacity (``wait_exponential + wait_random``: ``backoff_initial * 2**n`` capped
at ``backoff_max``, plus up to ``jitter`` random seconds, so receivers that come back are not
hit by every notifier at once). Each attempt first asks the receiver's
:class:`~rayworker.notify.breaker.CircuitBreaker`; a refused attempt fails at once without
touching the network. An attempt is bounded by ``timeout``. A notification whose attempts
are exhausted, or that the receiver rejects outright (HTTP 4xx, SMTP 5xx), is written to
the dead-letter sink with its reason and counted; failing to write the dead letter is
counted too and never raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from rayworker.clock import Clock
from rayworker.notify.breaker import CircuitBreaker
from rayworker.notify.config import DeliveryConfig, NotifyConfig
from rayworker.notify.dead_letters import DeadLetterSink, notification_record
from rayworker.notify.model import Notification, epoch_s, from_epoch_s
from rayworker.notify.receivers import DeliveryError, Sender

__all__ = ["Deliverer", "SenderFactory"]

log = logging.getLogger("rayworker.notify")

SenderFactory = Callable[[str, str], Sender]
"""``(tenant, receiver name) -> Sender``."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DeliveryError) and exc.transient


class Deliverer:
    """Delivers notifications; see the module docstring."""

    def __init__(
        self,
        config: NotifyConfig,
        senders: SenderFactory,
        dead_letters: DeadLetterSink,
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.senders = senders
        self.dead_letters = dead_letters
        self.clock = clock
        self.sleep = sleep
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._limits: dict[tuple[str, str], asyncio.Semaphore] = {}

    def _delivery(self, tenant: str, receiver: str) -> DeliveryConfig:
        tenant_config = self.config.for_tenant(tenant)
        if tenant_config is None:
            return self.config.delivery
        return self.config.delivery_for(tenant_config.receiver(receiver))

    def breaker(self, tenant: str, receiver: str) -> CircuitBreaker:
        """The circuit breaker of one tenant's receiver."""
        key = (tenant, receiver)
        found = self.breakers.get(key)
        if found is None:
            d = self._delivery(tenant, receiver)
            found = self.breakers[key] = CircuitBreaker(d.breaker_failures, d.breaker_reset)
        return found

    def _count(self, n: Notification, what: str, by: int = 1) -> None:
        self.counts[(n.tenant, n.receiver, what)] += by

    async def deliver(self, n: Notification) -> bool:
        """Deliver with retries; True when delivered, False when dead-lettered."""
        key = (n.tenant, n.receiver)
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = asyncio.Semaphore(
                self._delivery(n.tenant, n.receiver).concurrency
            )
        async with limit:
            return await self._deliver(n)

    async def _deliver(self, n: Notification) -> bool:
        d = self._delivery(n.tenant, n.receiver)
        sender = self.senders(n.tenant, n.receiver)
        breaker = self.breaker(n.tenant, n.receiver)
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(d.max_attempts),
            wait=wait_exponential(multiplier=d.backoff_initial, max=d.backoff_max)
            + wait_random(0, d.jitter),
            retry=retry_if_exception(_retryable),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    await self._attempt(sender, n, d, breaker)
        except DeliveryError as exc:
            self._count(n, "attempts", attempts)
            await self.dead_letter(n, exc, attempts)
            return False
        self._count(n, "attempts", attempts)
        self._count(n, "delivered")
        if attempts > 1:
            self._count(n, "retried")
        return True

    async def _attempt(
        self, sender: Sender, n: Notification, d: DeliveryConfig, breaker: CircuitBreaker
    ) -> None:
        now = epoch_s(self.clock.now())
        if not breaker.allow(now):
            msg = (
                f"circuit breaker of receiver {n.receiver} is open after "
                f"{breaker.consecutive} consecutive failures; next probe in "
                f"{breaker.retry_in(now):.1f}s"
            )
            raise DeliveryError(msg, transient=True, breaker_open=True)
        try:
            async with asyncio.timeout(d.timeout):
                await sender.send(n)
        except TimeoutError:
            breaker.failure(epoch_s(self.clock.now()))
            msg = f"receiver {n.receiver}: no answer within {d.timeout:g}s"
            raise DeliveryError(msg, transient=True) from None
        except DeliveryError as exc:
            if exc.transient:
                breaker.failure(epoch_s(self.clock.now()))
            else:
                breaker.success()  # it answered: the receiver is up, the request is wrong
            raise
        breaker.success()

    async def dead_letter(
        self,
        n: Notification,
        exc: DeliveryError | None,
        attempts: int,
        *,
        reason: str = "shutdown",
    ) -> None:
        """Write a notification to the dead-letter sink and count it; never raises.

        Without ``exc`` the notification was never finished: ``reason`` says why
        (``shutdown``: the notifier stopped first; ``crashed``: a sender raised something
        other than a delivery error).
        """
        if exc is None:
            error = (
                "the notifier stopped before it was delivered"
                if reason == "shutdown"
                else "the delivery failed unexpectedly; see the notifier's log"
            )
        elif exc.breaker_open:
            reason, error = "circuit_open", str(exc)
        elif exc.transient:
            reason, error = "retries_exhausted", str(exc)
        else:
            reason, error = "rejected", str(exc)
        record: dict[str, Any] = {
            "tenant": n.tenant,
            "receiver": n.receiver,
            "reason": reason,
            "error": error,
            "attempts": attempts,
            "idempotency_key": n.idempotency_key,
            "group_key": n.group_key,
            "alert_ids": n.alert_ids,
            "failed_at": from_epoch_s(epoch_s(self.clock.now())).isoformat(),
            "notification": notification_record(n),
        }
        self._count(n, "dead_lettered")
        log.warning(
            "notification to %s of tenant %s dead-lettered (%s): %s",
            n.receiver,
            n.tenant,
            reason,
            error,
        )
        try:
            await self.dead_letters.put(record)
        except Exception as write_error:  # noqa: BLE001 - a dead-letter failure must not spread
            self._count(n, "dead_letter_errors")
            log.error(
                "could not dead-letter a notification to %s of tenant %s: %s",
                n.receiver,
                n.tenant,
                type(write_error).__name__,
            )

    def stats(self) -> dict[str, Any]:
        """Counters per tenant and receiver, and each breaker's state."""
        out: dict[str, Any] = {}
        for (tenant, receiver, what), n in self.counts.items():
            out.setdefault(tenant, {}).setdefault(receiver, {})[what] = n
        for (tenant, receiver), breaker in self.breakers.items():
            out.setdefault(tenant, {}).setdefault(receiver, {})["breaker"] = breaker.to_state()
        return out
