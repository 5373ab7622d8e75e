"""Guarding calls to an external store: retries with backoff behind a circuit breaker.

:class:`StoreGuard` wraps an awaitable call to a store (the router's alert persistence, say)
so that an outage back-pressures the caller instead of failing it or dropping what it was
writing::

    guard = StoreGuard("alert store", retry_on=(SinkError,))
    await guard.call(lambda: persist_alerts.remote(dsn, alerts))

* Exceptions of a ``retry_on`` type are retried **forever** with exponential backoff and full
  jitter (tenacity's ``wait_random_exponential``): attempt *n* waits a random time in
  ``[0, min(initial_backoff_s * 2**(n-1), max_backoff_s)]``. Any other exception propagates
  at once, and so does cancellation.
* After ``failure_threshold`` consecutive failures (over all callers) the breaker opens:
  callers then wait in :meth:`StoreGuard.call` without touching the store. After
  ``reset_timeout_s`` exactly one caller's attempt goes through as a probe (half-open); its
  success closes the breaker and releases everyone, its failure re-opens the breaker for
  another ``reset_timeout_s``.
* :meth:`StoreGuard.state` grades the store for health reports: ``CRITICAL`` while the breaker
  is open or half-open, ``WARNING`` while it is closed but calls are being retried, else
  ``OK``; ``reason`` names the store and the last error.

A breaker library was not used: purgatory, pybreaker, circuitbreaker and aiobreaker all fail
fast while open (they raise instead of holding the caller), let every concurrent caller
through when half-open rather than one probe, and read the wall clock directly, so none gives
the hold-and-release semantics above or a clock a test can drive. The state machine below is
small; backoff and jitter are tenacity's.

Pure asyncio: this module never imports ray, redis or asyncpg. Ray re-raises a task's
exception as a class that is also an instance of the original type, so
``retry_on=(SinkError,)`` matches a failed ``persist_alerts`` task; its original exception
(``.cause``) is what :attr:`GuardState.last_error` shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

__all__ = ["GuardState", "StoreGuard"]

_log = logging.getLogger("rayworker.resilience")

_T = TypeVar("_T")
Status = Literal["OK", "WARNING", "CRITICAL"]
Breaker = Literal["closed", "open", "half_open"]

# An error's text can be a whole remote traceback; health answers need one readable line.
_ERROR_CHARS: Final = 300


@dataclass(frozen=True, slots=True)
class GuardState:
    """A snapshot of one guarded store, for health reports."""

    name: str
    """The store's name, as given to :class:`StoreGuard`."""
    status: Status
    """CRITICAL while the breaker is open or half-open, WARNING while retrying, else OK."""
    breaker: Breaker
    consecutive_failures: int
    """Retryable failures since the last success, over all callers."""
    last_error: str | None
    """``Type: message`` of the latest retryable failure of the current outage."""
    since: float | None
    """Monotonic time of the first failure of the current outage; None when there is none."""
    retries: int
    """Retryable failures since the guard was made (each one is retried)."""
    waiting: int
    """Callers held at the breaker right now (their writes are not lost, only delayed)."""
    reason: str
    """One line for a health report: the store, what is wrong, the last error."""


def _describe(exc: BaseException) -> str:
    # A Ray task error keeps the original exception as .cause; its own str() is the remote
    # traceback, too long for a health line.
    cause = getattr(exc, "cause", None)
    shown = cause if isinstance(cause, BaseException) else exc
    text = " ".join(str(shown).split())
    if len(text) > _ERROR_CHARS:
        text = text[: _ERROR_CHARS - 3] + "..."
    name = type(shown).__name__
    return f"{name}: {text}" if text else name


class StoreGuard:
    """Retries calls to one store with backoff and holds callers while its breaker is open.

    ``clock`` (monotonic seconds) and ``sleep`` are injectable so tests can drive time;
    share one guard between all callers of a store so the breaker sees all their failures.
    """

    def __init__(
        self,
        name: str,
        *,
        retry_on: tuple[type[BaseException], ...],
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not retry_on:
            msg = "Got no exception types for retry_on. Name the store's outage error(s)."
            raise ValueError(msg)
        if any(issubclass(asyncio.CancelledError, t) for t in retry_on):
            msg = (
                f"Got {retry_on!r} for retry_on, which matches asyncio.CancelledError."
                " Name the store's outage errors, or cancelling a caller would retry forever."
            )
            raise ValueError(msg)
        if not 0 < initial_backoff_s <= max_backoff_s:
            msg = (
                f"Got initial_backoff_s={initial_backoff_s} and max_backoff_s={max_backoff_s}."
                " Use 0 < initial_backoff_s <= max_backoff_s."
            )
            raise ValueError(msg)
        if failure_threshold < 1:
            msg = f"Got {failure_threshold} for failure_threshold. Use 1 or more failures."
            raise ValueError(msg)
        if reset_timeout_s <= 0:
            msg = f"Got {reset_timeout_s} for reset_timeout_s. Use more than 0 seconds."
            raise ValueError(msg)
        self._name = name
        self._retry_on = retry_on
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._breaker: Breaker = "closed"
        self._failures = 0
        self._last_error: str | None = None
        self._since: float | None = None
        self._opened_at = 0.0
        self._retries = 0
        self._waiting = 0
        # Replaced on every breaker change: waiters hold the old one, which is then set.
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"StoreGuard(name={self._name!r}, breaker={self._breaker!r})"

    @property
    def name(self) -> str:
        """The guarded store's name."""
        return self._name

    @property
    def healthy(self) -> bool:
        """The breaker is closed and the last call succeeded."""
        return self._breaker == "closed" and not self._failures

    async def call(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """``await fn()`` until it succeeds, retrying outage errors; returns its result.

        ``fn`` is called anew for each attempt (a Ray ``.remote()`` call must be re-submitted,
        not re-awaited). Exceptions not in ``retry_on`` propagate at once, as does
        cancellation; outage errors never do.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(self._retry_on),
            wait=wait_random_exponential(
                multiplier=self._initial_backoff_s, max=self._max_backoff_s
            ),
            sleep=self._sleep,
        )
        result: _T = await retrying(self._attempt, fn)
        return result

    def state(self) -> GuardState:
        """The store's grade, breaker and failure counts now."""
        if self._breaker != "closed":
            status: Status = "CRITICAL"
            down_s = 0.0 if self._since is None else self._clock() - self._since
            reason = (
                f"{self._name} is unavailable: circuit breaker {self._breaker.replace('_', '-')}"
                f" after {self._failures} consecutive failures over {down_s:.0f} s (last error:"
                f" {self._last_error}); {self._waiting} writes are held and retried, nothing is"
                f" dropped; check that {self._name} is up and reachable"
            )
        elif self._failures:
            status = "WARNING"
            reason = (
                f"{self._name}: {self._failures} consecutive failures, retrying with backoff"
                f" (last error: {self._last_error})"
            )
        else:
            status = "OK"
            reason = f"{self._name}: OK"
        return GuardState(
            name=self._name,
            status=status,
            breaker=self._breaker,
            consecutive_failures=self._failures,
            last_error=self._last_error,
            since=self._since,
            retries=self._retries,
            waiting=self._waiting,
            reason=reason,
        )

    async def _attempt(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        probe = await self._admit()
        try:
            result = await fn()
        except self._retry_on as exc:
            self._failed(exc, probe=probe)
            raise
        except BaseException:
            if probe:
                # Neither an outage nor a recovery (a bug, or the caller was cancelled): hand
                # the probe to the next caller at once rather than after another timeout.
                self._move("open")
            raise
        self._succeeded()
        return result

    async def _admit(self) -> bool:
        """Wait until this caller may call the store; True when its call is the probe."""
        self._waiting += 1
        try:
            while True:
                if self._breaker == "closed":
                    return False
                if self._breaker == "open":
                    remaining = self._opened_at + self._reset_timeout_s - self._clock()
                    if remaining <= 0:
                        self._move("half_open")
                        return True
                    await self._changed_or_slept(remaining)
                else:
                    # A probe is in flight: its outcome decides for everyone.
                    await self._changed.wait()
        finally:
            self._waiting -= 1

    async def _changed_or_slept(self, delay: float) -> None:
        changed = asyncio.ensure_future(self._changed.wait())
        slept = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((changed, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            slept.cancel()

    def _failed(self, exc: BaseException, *, probe: bool) -> None:
        now = self._clock()
        self._failures += 1
        self._retries += 1
        self._last_error = _describe(exc)
        if self._since is None:
            self._since = now
        if probe:
            _log.info(
                "%s still unavailable (probe failed: %s); next probe in %.1f s",
                self._name,
                self._last_error,
                self._reset_timeout_s,
            )
            self._opened_at = now
            self._move("open")
        elif self._breaker == "closed" and self._failures >= self._threshold:
            _log.warning(
                "%s unavailable after %d consecutive failures (last error: %s); holding its"
                " writes and probing every %.1f s",
                self._name,
                self._failures,
                self._last_error,
                self._reset_timeout_s,
            )
            self._opened_at = now
            self._move("open")

    def _succeeded(self) -> None:
        if self._since is not None:
            _log.info(
                "%s answers again after %.1f s and %d consecutive failures",
                self._name,
                self._clock() - self._since,
                self._failures,
            )
        self._failures = 0
        self._last_error = None
        self._since = None
        if self._breaker != "closed":
            self._move("closed")

    def _move(self, breaker: Breaker) -> None:
        self._breaker = breaker
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
