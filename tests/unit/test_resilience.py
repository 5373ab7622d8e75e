"""StoreGuard: retries with backoff, the circuit breaker, cancellation and health grading.

Time is a :class:`ManualClock`: ``sleep`` blocks until the test advances the clock (or, with
``autojump``, returns at once after moving the clock), so no test sleeps for real.
"""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from rayworker import resilience
from rayworker.errors import SinkError
from rayworker.resilience import GuardState, StoreGuard


class ManualClock:
    """A monotonic clock and a sleep that only time advanced by the test can end."""

    def __init__(self, *, autojump: bool = False) -> None:
        self.now = 1000.0
        self.autojump = autojump
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if self.autojump or delay <= 0:
            self.now += max(delay, 0.0)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + delay, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on, wake the sleepers that are due and let every task run."""
        self.now += seconds
        due = [s for s in self._sleepers if s[0] <= self.now]
        self._sleepers = [s for s in self._sleepers if s[0] > self.now]
        for _, future in due:
            if not future.done():
                future.set_result(None)
        await settle()


async def settle() -> None:
    """Let every ready task run until all are blocked again."""
    for _ in range(50):
        await asyncio.sleep(0)


class Store:
    """A fake store: fails with ``error`` while ``down``, counts calls, can block calls."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.down = error is not None
        self.error: BaseException = error or SinkError("connection refused")
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def write(self) -> str:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise self.error
        return f"ok-{self.calls}"


def guard(clock: ManualClock, **options: Any) -> StoreGuard:
    options.setdefault("failure_threshold", 3)
    options.setdefault("reset_timeout_s", 5.0)
    options.setdefault("initial_backoff_s", 0.01)
    return StoreGuard(
        "alert store", retry_on=(SinkError,), clock=clock, sleep=clock.sleep, **options
    )


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=5))


class RemoteError(Exception):
    """Stands in for Ray's RayTaskError(SinkError): a remote traceback as str(), .cause."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::persist_alerts() (pid=1)\n  File x.py, line 3\nSinkError: ...")
        self.cause = cause


class RemoteSinkError(RemoteError, SinkError):
    """Both a task error and a SinkError, as Ray builds it."""


def test_retries_with_capped_jittered_backoff_then_succeeds() -> None:
    """Outage errors are retried with full-jitter backoff under the cap until the call works."""

    async def main() -> None:
        clock = ManualClock(autojump=True)
        g = guard(clock, failure_threshold=100, initial_backoff_s=0.1, max_backoff_s=0.5)
        store = Store(SinkError("down"))
        failures = 8

        async def flaky() -> str:
            if store.calls == failures:
                store.down = False
            return await store.write()

        assert await g.call(flaky) == f"ok-{failures + 1}"
        assert store.calls == failures + 1
        assert len(clock.sleeps) == failures
        for n, slept in enumerate(clock.sleeps, start=1):
            assert 0 <= slept <= min(0.1 * 2 ** (n - 1), 0.5)
        state = g.state()
        assert (state.status, state.retries, state.consecutive_failures) == ("OK", failures, 0)

    run(main)


def test_non_retryable_error_propagates_at_once() -> None:
    """An exception outside retry_on propagates from the first attempt, with no retry."""

    async def main() -> None:
        clock = ManualClock(autojump=True)
        g = guard(clock)
        store = Store(ValueError("bad alert"))
        with pytest.raises(ValueError, match="bad alert"):
            await g.call(store.write)
        assert store.calls == 1
        assert clock.sleeps == []
        assert g.state().status == "OK"

    run(main)


def test_breaker_opens_after_threshold_and_holds_callers() -> None:
    """After N consecutive failures the breaker opens and no caller reaches the store."""

    async def main() -> None:
        clock = ManualClock()
        g = guard(clock, failure_threshold=3, reset_timeout_s=1000.0, max_backoff_s=0.1)
        store = Store(SinkError("down"))
        first = asyncio.create_task(g.call(store.write))
        await settle()
        await clock.advance(0.1)
        await clock.advance(0.1)
        assert store.calls == 3
        assert g.state().breaker == "open"
        await clock.advance(0.1)  # the first caller's backoff ends: it waits at the breaker
        others = [asyncio.create_task(g.call(store.write)) for _ in range(4)]
        await clock.advance(990.0)
        assert store.calls == 3, "callers must not hit the store while the breaker is open"
        assert g.state().waiting == 5
        for task in [first, *others]:
            task.cancel()
        await asyncio.gather(first, *others, return_exceptions=True)

    run(main)


def test_one_probe_after_reset_timeout_and_success_releases_everyone() -> None:
    """After the reset timeout one probe goes through; its success closes and frees waiters."""

    async def main() -> None:
        clock = ManualClock()
        g = guard(clock, failure_threshold=1, reset_timeout_s=5.0, max_backoff_s=0.01)
        store = Store(SinkError("down"))
        first = asyncio.create_task(g.call(store.write))
        await settle()
        assert g.state().breaker == "open"
        await clock.advance(0.01)  # the first caller's backoff ends; it waits at the breaker
        waiters = [asyncio.create_task(g.call(store.write)) for _ in range(3)]
        await settle()
        assert store.calls == 1
        store.down = False
        store.gate = asyncio.Event()  # hold the probe in flight to look at half-open
        await clock.advance(5.0)
        assert store.calls == 2, "exactly one probe after the reset timeout"
        assert g.state().breaker == "half_open"
        assert g.state().status == "CRITICAL"
        store.gate.set()
        results = await asyncio.gather(first, *waiters)
        assert sorted(results) == ["ok-2", "ok-3", "ok-4", "ok-5"]
        state = g.state()
        assert (state.breaker, state.status, state.consecutive_failures) == ("closed", "OK", 0)
        assert (state.last_error, state.since, state.waiting) == (None, None, 0)

    run(main)


def test_failed_probe_reopens_for_another_timeout() -> None:
    """A probe that fails re-opens the breaker; the next probe waits a full reset timeout."""

    async def main() -> None:
        clock = ManualClock()
        g = guard(clock, failure_threshold=1, reset_timeout_s=5.0, max_backoff_s=0.01)
        store = Store(SinkError("still down"))
        task = asyncio.create_task(g.call(store.write))
        await settle()
        await clock.advance(5.0)  # backoff and reset timeout over: the probe fails
        assert store.calls == 2
        assert g.state().breaker == "open"
        await clock.advance(0.01)
        await clock.advance(4.9)
        assert store.calls == 2, "no call before the re-opened breaker's timeout"
        store.down = False
        await clock.advance(0.2)
        assert await task == "ok-3"
        assert g.state().breaker == "closed"

    run(main)


def test_cancellation_propagates_from_backoff_breaker_and_call() -> None:
    """Cancelling a caller ends it at once wherever it waits; a cancelled probe hands over."""

    async def main() -> None:
        clock = ManualClock()
        g = guard(clock, failure_threshold=2, reset_timeout_s=5.0, max_backoff_s=1.0)
        store = Store(SinkError("down"))
        in_backoff = asyncio.create_task(g.call(store.write))
        await settle()
        assert store.calls == 1  # now sleeping its backoff
        in_backoff.cancel()
        with pytest.raises(asyncio.CancelledError):
            await in_backoff

        at_breaker = asyncio.create_task(g.call(store.write))
        await settle()
        assert g.state().breaker == "open"
        await clock.advance(1.0)  # backoff over: held at the breaker
        assert g.state().waiting == 1
        at_breaker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await at_breaker
        assert g.state().waiting == 0

        # A probe cancelled in flight lets the next caller probe without another timeout.
        store.gate = asyncio.Event()
        await clock.advance(5.0)
        probe = asyncio.create_task(g.call(store.write))
        await settle()
        assert g.state().breaker == "half_open"
        calls = store.calls
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert g.state().breaker == "open"
        store.gate = None
        store.down = False
        assert await g.call(store.write) == f"ok-{calls + 1}"
        assert g.state().breaker == "closed"

    run(main)


def test_state_grades_and_messages_follow_the_outage() -> None:
    """OK, then WARNING while retrying, CRITICAL with store and error while open, OK again."""

    async def main() -> None:
        clock = ManualClock()
        g = guard(clock, failure_threshold=2, reset_timeout_s=5.0, max_backoff_s=0.01)
        assert g.state() == GuardState(
            name="alert store",
            status="OK",
            breaker="closed",
            consecutive_failures=0,
            last_error=None,
            since=None,
            retries=0,
            waiting=0,
            reason="alert store: OK",
        )
        store = Store(RemoteSinkError(SinkError("PostgreSQL refused the connection")))
        started = clock.now
        task = asyncio.create_task(g.call(store.write))
        await settle()
        warning = g.state()
        assert warning.status == "WARNING"
        assert warning.since == started
        assert warning.last_error == "SinkError: PostgreSQL refused the connection"
        assert "retrying" in warning.reason
        await clock.advance(0.01)
        critical = g.state()
        assert (critical.status, critical.breaker, critical.consecutive_failures) == (
            "CRITICAL",
            "open",
            2,
        )
        assert critical.reason.startswith("alert store is unavailable")
        assert "PostgreSQL refused the connection" in critical.reason
        assert "ray::" not in critical.reason, "the remote traceback stays out of health"
        store.down = False
        await clock.advance(5.0)
        assert await task == "ok-3"
        assert g.state().status == "OK"
        assert g.state().retries == 2

    run(main)


def test_ray_style_dual_errors_are_retried() -> None:
    """An error that is both a task error and a SinkError (as Ray raises it) is retried."""

    async def main() -> None:
        clock = ManualClock(autojump=True)
        g = guard(clock, failure_threshold=10)
        store = Store(RemoteSinkError(SinkError("down")))

        async def once_down() -> str:
            try:
                return await store.write()
            finally:
                store.down = False

        store_call: Callable[[], Awaitable[str]] = once_down
        assert await g.call(store_call) == "ok-2"

    run(main)


def test_breaker_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Opening is a WARNING naming the store and the error; recovery is logged too."""

    async def main() -> None:
        clock = ManualClock(autojump=True)
        g = guard(clock, failure_threshold=1, reset_timeout_s=1.0, max_backoff_s=0.01)
        store = Store(SinkError("connection refused"))
        task = asyncio.create_task(g.call(store.write))
        await settle()
        store.down = False
        await clock.advance(1.0)
        await task

    with caplog.at_level(logging.INFO, logger="rayworker.resilience"):
        run(main)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert "alert store" in warnings[0].getMessage()
    assert "connection refused" in warnings[0].getMessage()
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_bad_options_are_refused() -> None:
    """Empty retry_on, one matching cancellation, or bad numbers fail at construction."""
    with pytest.raises(ValueError, match="retry_on"):
        StoreGuard("s", retry_on=())
    with pytest.raises(ValueError, match="CancelledError"):
        StoreGuard("s", retry_on=(BaseException,))
    with pytest.raises(ValueError, match="initial_backoff_s"):
        StoreGuard("s", retry_on=(SinkError,), initial_backoff_s=2, max_backoff_s=1)
    with pytest.raises(ValueError, match="failure_threshold"):
        StoreGuard("s", retry_on=(SinkError,), failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout_s"):
        StoreGuard("s", retry_on=(SinkError,), reset_timeout_s=0)


def test_module_imports_no_infrastructure() -> None:
    """rayworker.resilience is pure asyncio: it imports neither ray, redis nor asyncpg."""
    source = Path(resilience.__file__).read_text()
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots & {"ray", "redis", "asyncpg"} == set()
