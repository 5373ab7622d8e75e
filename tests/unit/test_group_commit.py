"""Group commit: submits made while a write runs go out together in the next write."""

from __future__ import annotations

import asyncio

import pytest

from rayworker.pipeline.group_commit import GroupCommit


def test_submits_during_a_write_are_joined_into_the_next_one() -> None:
    """The first submit writes alone; the three made meanwhile go in one write, in order."""

    async def run() -> list[list[int]]:
        writes: list[list[int]] = []
        gate = asyncio.Event()

        async def write(items: list[int]) -> None:
            writes.append(items)
            if len(writes) == 1:
                await gate.wait()

        commit: GroupCommit[int] = GroupCommit(write)
        first = asyncio.create_task(commit.submit([1]))
        await asyncio.sleep(0)
        later = [asyncio.create_task(commit.submit([n, n * 10])) for n in (2, 3, 4)]
        await asyncio.sleep(0)
        assert commit.waiting == 3
        gate.set()
        await asyncio.gather(first, *later)
        assert commit.writes == 2
        return writes

    assert asyncio.run(run()) == [[1], [2, 20, 3, 30, 4, 40]]


def test_a_failed_write_fails_every_submit_it_carried_and_the_next_write_goes_on() -> None:
    """Each submit of a failed write raises its error; a later submit is written normally."""

    async def run() -> tuple[list[BaseException | None], list[list[str]]]:
        writes: list[list[str]] = []
        gate = asyncio.Event()

        async def write(items: list[str]) -> None:
            writes.append(items)
            if items == ["a"]:
                await gate.wait()
            if "bad" in items:
                msg = "database down"
                raise OSError(msg)

        commit: GroupCommit[str] = GroupCommit(write)
        first = asyncio.create_task(commit.submit(["a"]))
        await asyncio.sleep(0)
        joined = [asyncio.create_task(commit.submit([x])) for x in ("bad", "b")]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, *joined, return_exceptions=True)
        await commit.submit(["c"])
        return [r if isinstance(r, BaseException) else None for r in results], writes

    results, writes = asyncio.run(run())
    assert results[0] is None
    assert all(isinstance(r, OSError) and str(r) == "database down" for r in results[1:])
    assert writes == [["a"], ["bad", "b"], ["c"]]


def test_a_cancelled_submit_does_not_break_the_write_it_was_in() -> None:
    """Cancelling one waiting submit leaves the others of its write to complete."""

    async def run() -> list[list[int]]:
        writes: list[list[int]] = []
        gate = asyncio.Event()

        async def write(items: list[int]) -> None:
            writes.append(items)
            await gate.wait()

        commit: GroupCommit[int] = GroupCommit(write)
        first = asyncio.create_task(commit.submit([1]))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(commit.submit([2]))
        kept = asyncio.create_task(commit.submit([3]))
        await asyncio.sleep(0)
        doomed.cancel()
        gate.set()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return writes

    assert asyncio.run(run()) == [[1], [2, 3]]
