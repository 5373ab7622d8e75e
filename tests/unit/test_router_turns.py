"""The router takes a driver's concurrent submits in the order the driver numbered them."""

from __future__ import annotations

import asyncio

import pytest

from rayworker.errors import StateError
from rayworker.pipeline.router import _Turns


def test_submits_that_arrive_out_of_order_are_taken_in_their_numbered_order() -> None:
    """Submits 0..4 arriving as 3, 1, 4, 0, 2 each get their turn in number order."""

    async def run() -> list[int]:
        turns = _Turns(changed=asyncio.Condition())
        taken: list[int] = []

        async def submit(number: int) -> None:
            await turns.take("driver-a", number)
            taken.append(number)
            await asyncio.sleep(0)  # a submit may await while holding its turn
            await turns.done("driver-a")

        await asyncio.gather(*(submit(n) for n in (3, 1, 4, 0, 2)))
        return taken

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_a_new_stream_starts_at_zero_and_stale_waiters_of_the_old_one_fail() -> None:
    """A driver that recovers numbers a new stream from 0; a call of the old stream still
    waiting for its turn fails instead of running between the new stream's calls."""

    async def run() -> tuple[list[str], BaseException | None]:
        turns = _Turns(changed=asyncio.Condition())
        taken: list[str] = []
        await turns.take("old", 0)
        taken.append("old-0")
        await turns.done("old")
        stale = asyncio.create_task(turns.take("old", 5))  # its predecessors never came
        await asyncio.sleep(0)
        await turns.take("new", 0)
        taken.append("new-0")
        await turns.done("new")
        await turns.take("new", 1)
        taken.append("new-1")
        await turns.done("new")
        error = (await asyncio.gather(stale, return_exceptions=True))[0]
        return taken, error if isinstance(error, BaseException) else None

    taken, error = asyncio.run(run())
    assert taken == ["old-0", "new-0", "new-1"]
    assert isinstance(error, StateError)
    assert "superseded" in str(error)


def test_a_finished_call_of_a_replaced_stream_does_not_advance_the_new_one() -> None:
    """``done`` of the old stream after a new one began leaves the new stream's turn alone."""

    async def run() -> int:
        turns = _Turns(changed=asyncio.Condition())
        await turns.take("old", 0)
        await turns.take("new", 0)
        await turns.done("old")
        return turns.next

    assert asyncio.run(run()) == 0


@pytest.mark.parametrize("numbers", [[0], [0, 1, 2]])
def test_in_order_submits_never_wait(numbers: list[int]) -> None:
    """Submits that arrive in order pass straight through."""

    async def run() -> int:
        turns = _Turns(changed=asyncio.Condition())
        for number in numbers:
            await asyncio.wait_for(turns.take("d", number), 1.0)
            await turns.done("d")
        return turns.next

    assert asyncio.run(run()) == len(numbers)
