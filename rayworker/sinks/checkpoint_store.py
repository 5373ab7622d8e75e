"""Where checkpoints live: the alert store's own database.

Checkpoints must outlive any process and be readable from any node, so they go to the
durable store the pipeline already needs: PostgreSQL in production, the SQLite file of the
embedded default on one machine. Redis was the other candidate and is rejected: here it keeps
nothing on disk, so a Redis restart would lose the checkpoints together with the stream
positions they refer to. Each alert store implements :class:`CheckpointStore` on its own
connection (``checkpoints`` table, migration 0003); the in-memory store does too, for tests.

A barrier is *complete* once the router's row for it exists: the router writes it only after
every shard's row for that barrier is saved, so the latest router row names a consistent set.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rayworker.checkpoint import ROUTER_OWNER, Checkpoint

__all__ = ["ROUTER_OWNER", "CheckpointStore", "MemoryCheckpoints"]


@runtime_checkable
class CheckpointStore(Protocol):
    """Durable checkpoints, per pipeline (its Ray namespace) and owner."""

    async def save_checkpoint(self, pipeline: str, checkpoint: Checkpoint) -> None:
        """Write (or overwrite) one owner's checkpoint of one barrier."""
        ...

    async def latest_checkpoint(self, pipeline: str, owner: str) -> Checkpoint | None:
        """The owner's checkpoint with the highest barrier, or None."""
        ...

    async def load_checkpoint(self, pipeline: str, owner: str, barrier: int) -> Checkpoint | None:
        """The owner's checkpoint of exactly ``barrier``, or None."""
        ...

    async def prune_checkpoints(self, pipeline: str, below: int) -> int:
        """Delete every checkpoint of barriers below ``below``; returns rows deleted."""
        ...

    async def clear_checkpoints(self, pipeline: str) -> int:
        """Delete all of a pipeline's checkpoints (a fresh start); returns rows deleted."""
        ...


class MemoryCheckpoints:
    """:class:`CheckpointStore` in a dict: the reference semantics, mixed into the memory
    alert store."""

    def __init__(self) -> None:
        self._checkpoints: dict[tuple[str, str, int], Checkpoint] = {}

    async def save_checkpoint(self, pipeline: str, checkpoint: Checkpoint) -> None:
        """Write (or overwrite) one owner's checkpoint of one barrier."""
        self._checkpoints[(pipeline, checkpoint.owner, checkpoint.barrier)] = checkpoint

    async def latest_checkpoint(self, pipeline: str, owner: str) -> Checkpoint | None:
        """The owner's checkpoint with the highest barrier, or None."""
        found = [c for (p, o, _), c in self._checkpoints.items() if p == pipeline and o == owner]
        return max(found, key=lambda c: c.barrier, default=None)

    async def load_checkpoint(self, pipeline: str, owner: str, barrier: int) -> Checkpoint | None:
        """The owner's checkpoint of exactly ``barrier``, or None."""
        return self._checkpoints.get((pipeline, owner, barrier))

    async def prune_checkpoints(self, pipeline: str, below: int) -> int:
        """Delete every checkpoint of barriers below ``below``; returns rows deleted."""
        doomed = [k for k in self._checkpoints if k[0] == pipeline and k[2] < below]
        for key in doomed:
            del self._checkpoints[key]
        return len(doomed)

    async def clear_checkpoints(self, pipeline: str) -> int:
        """Delete all of a pipeline's checkpoints (a fresh start); returns rows deleted."""
        doomed = [k for k in self._checkpoints if k[0] == pipeline]
        for key in doomed:
            del self._checkpoints[key]
        return len(doomed)
