"""Group commit: items submitted while a write is running go out together in the next one.

The router persists the alerts of every shard answer before the answer's tickets are done.
One task per answer cost the router more (Ray task submission, pickling) than screening the
events did; joined, a busy pipeline makes a few writes per second whatever its batch rate,
and a quiet one still writes each answer at once. A write that fails fails every submit it
carried, and those tickets are delivered again, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Runs ``write`` on everything submitted, one write at a time (see the module doc)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[object]]) -> None:
        self._write = write
        self._queue: list[tuple[list[T], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0
        """Writes made so far."""

    async def submit(self, items: list[T]) -> None:
        """Return once ``items`` are written; raise what their write raised."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((items, waiter))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await waiter

    @property
    def waiting(self) -> int:
        """Submits not yet taken by a write."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """No write is running and none is waiting."""
        return not self._queue and (self._writer is None or self._writer.done())

    async def _drain(self) -> None:
        while self._queue:
            taken, self._queue = self._queue, []
            items = [item for batch, _ in taken for item in batch]
            try:
                await self._write(items)
            except Exception as exc:  # noqa: BLE001 - handed to every submit it carried
                for _, waiter in taken:
                    if not waiter.done():
                        waiter.set_exception(exc)
            else:
                for _, waiter in taken:
                    if not waiter.done():
                        waiter.set_result(None)
            self.writes += 1
