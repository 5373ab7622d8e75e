"""The pump's acknowledgement bookkeeping, with a stand-in router: no ticket heard of as done
is ever lost, whichever of the feed loop and the acknowledger hears of it first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from rayworker.pipeline.pump import Batch, Pump
from rayworker.pipeline.router import Receipt


class _Method:
    """A stand-in for a Ray actor method: ``.remote(...)`` returns an awaitable."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.call(*args))


class _Router:
    def __init__(self) -> None:
        self.waits: list[tuple[list[int], list[tuple[int, str]]]] = []
        self.on_wait: Callable[[], None] = lambda: None
        self.wait_completed = _Method(self._wait_completed)

    async def _wait_completed(self, timeout_s: float) -> tuple[list[int], list[tuple[int, str]]]:
        self.on_wait()
        return self.waits.pop(0) if self.waits else ([], [])


class _Driver:
    recoverable = False
    tracing = False

    def __init__(self) -> None:
        self.router = _Router()
        self.shards: dict[int, Any] = {}


def _pump() -> tuple[Pump, list[Any]]:
    acked: list[Any] = []

    async def ack(tokens: Sequence[Any]) -> None:
        acked.extend(tokens)

    return Pump(_Driver(), ack=ack), acked  # type: ignore[arg-type]


def _answered(ticket: int, done: list[int] | None = None) -> asyncio.Future[Receipt]:
    receipt: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
    receipt.set_result(Receipt(ticket, 1, [], [], done=done or []))
    return receipt


def test_a_ticket_heard_of_before_its_receipt_is_acked_when_the_receipt_comes() -> None:
    """A done ticket newer than every receipt taken is kept, and acknowledged (once) as soon
    as its receipt is taken; an older ticket with a known token is acknowledged at once."""

    async def scenario() -> list[Any]:
        pump, acked = _pump()
        pump.in_flight.append((Batch([b"{}"], token="entry-4"), _answered(4)))
        assert await pump._receive()
        pump.in_flight.append((Batch([b"{}"], token="entry-5"), _answered(5)))
        assert await pump._finished([4, 5], [])
        assert acked == ["entry-4"]
        assert await pump._receive()
        assert await pump._finished([], [])
        return acked

    assert asyncio.run(scenario()) == ["entry-4", "entry-5"]


def test_the_acknowledger_keeps_done_tickets_a_wait_returns_after_a_recovery_began() -> None:
    """Done tickets a wait returns are acknowledged even if a recovery began while it waited
    (the router hands each out once); its failures are left to that recovery."""

    async def scenario() -> tuple[list[Any], bool]:
        pump, acked = _pump()
        pump.in_flight.append((Batch([b"{}"], token="entry-7"), _answered(7)))
        assert await pump._receive()
        router = pump.driver.router
        router.waits.append(([7], [(8, "shard_RayTaskError")]))

        def recovery_begins() -> None:
            pump._generation += 1
            pump._acking = False

        router.on_wait = recovery_begins
        await pump._acknowledge()
        return acked, pump._failed_meanwhile

    acked, failed_meanwhile = asyncio.run(scenario())
    assert acked == ["entry-7"]
    assert not failed_meanwhile


def test_the_acknowledger_takes_answered_receipts_of_early_tickets() -> None:
    """When a wait reports a ticket whose receipt the feed loop has not taken, the
    acknowledger takes that receipt itself and acknowledges the ticket."""

    async def scenario() -> list[Any]:
        pump, acked = _pump()
        pump.in_flight.append((Batch([b"{}"], token="entry-0"), _answered(0)))
        router = pump.driver.router
        router.waits.append(([0], []))

        def then_stop() -> None:
            pump._acking = False

        router.on_wait = then_stop
        await pump._acknowledge()
        assert not pump.in_flight
        return acked

    assert asyncio.run(scenario()) == ["entry-0"]


def test_a_failed_batch_is_logged_with_its_error(caplog: pytest.LogCaptureFixture) -> None:
    """A failed ticket is not acknowledged, and a warning names it and the router's error."""

    async def scenario() -> tuple[bool, list[Any]]:
        pump, acked = _pump()
        pump.in_flight.append((Batch([b"{}"], token="entry-3"), _answered(3)))
        assert await pump._receive()
        ok = await pump._finished([], [(3, "shard 1 restarted (state epoch None)")])
        return ok, acked

    with caplog.at_level(logging.WARNING, logger="rayworker.pump"):
        ok, acked = asyncio.run(scenario())
    assert not ok
    assert acked == []
    assert [r.getMessage() for r in caplog.records] == [
        "a batch failed (ticket 3): shard 1 restarted (state epoch None)"
    ]
