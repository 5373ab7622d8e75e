"""A fault drill's end is bounded: a step that hangs fails with where every task waits."""

from __future__ import annotations

import asyncio

import pytest

from rayworker import chaos


def test_a_hung_wind_down_step_raises_naming_the_step_and_the_waiting_tasks() -> None:
    """A step that never ends raises TimeoutError naming it, with the stack of each task."""

    async def stuck_forever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        bystander = asyncio.create_task(stuck_forever(), name="bystander")
        try:
            await chaos._wind_down("router.finish", stuck_forever(), timeout_s=0.05)
        finally:
            bystander.cancel()

    with pytest.raises(TimeoutError, match=r"router\.finish did not end within 0\.05 s") as caught:
        asyncio.run(main())
    assert "stuck_forever" in str(caught.value)


def test_a_step_that_ends_in_time_returns_its_result() -> None:
    """A step that finishes within the bound gives its result unchanged."""

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(chaos._wind_down("stats", answer(), timeout_s=5.0)) == 42


def test_a_drill_stalls_only_when_nothing_moves_for_longer_than_the_limit() -> None:
    """Progress is any change of (events seen, entries pending, entries read); the drill is
    stalled once the same state has lasted longer than the limit, and not before."""
    progress = chaos._Progress(0.0, limit_s=150.0)
    assert not progress.stalled((10, 5, 20), 0.0)
    assert not progress.stalled((10, 5, 20), 150.0)
    assert not progress.stalled((11, 5, 20), 200.0)  # moved: the clock starts again
    assert not progress.stalled((11, 5, 20), 349.0)
    assert progress.stalled((11, 5, 20), 351.0)
    assert not progress.stalled((11, 4, 20), 352.0)
