"""Checkpoints: stream positions, and state encoded for durable storage.

A pipeline that reads a Redis Stream recovers from any crash by restoring every state holder
(router and shards) to the last *complete* checkpoint and replaying, in stream order, the
entries after that checkpoint's position (:mod:`rayworker.pipeline.router`). This module is the
pure part of that: how a stream entry id becomes a comparable position, and how a state
snapshot (plain data from ``snapshot()``) becomes bytes and back.

Snapshots are encoded with msgpack (msgspec, already the hot-path decoder) and compressed
with zlib at a low level: a shard's windows are mostly repeated keys and small integers, which
compress several-fold at little CPU cost.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import msgspec

from rayworker.errors import StateError

__all__ = [
    "ROUTER_OWNER",
    "Checkpoint",
    "decode_state",
    "encode_state",
    "shard_owner",
    "stream_position",
]

_SEQ_BITS = 22
_SEQ_MAX = (1 << _SEQ_BITS) - 1
_FORMAT = b"RWC1"
ROUTER_OWNER = "router"
"""The owner name of the router's checkpoint: written last, it marks a barrier complete."""


def shard_owner(shard: int) -> str:
    """The owner name of shard ``shard``'s checkpoints."""
    return f"shard-{shard}"


def stream_position(entry_id: str) -> int:
    """A Redis Stream entry id (``"<ms>-<seq>"``) as one int that sorts like the ids.

    The millisecond part takes the high bits and the sequence the low 22: ids from one
    millisecond beyond 4 million entries would collide, which Redis cannot produce in practice
    (it writes far fewer entries per millisecond).
    """
    ms, sep, seq = entry_id.partition("-")
    try:
        millis = int(ms)
        sequence = int(seq) if sep else 0
    except ValueError:
        msg = f"{entry_id!r} is not a stream entry id; expected '<milliseconds>-<sequence>'"
        raise StateError(msg) from None
    if millis < 0 or not 0 <= sequence <= _SEQ_MAX:
        msg = f"stream entry id {entry_id!r} is out of range for a position"
        raise StateError(msg)
    return (millis << _SEQ_BITS) | sequence


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One state holder's state at one barrier."""

    owner: str
    """``"router"`` or ``"shard-<n>"``."""
    barrier: int
    """Barriers are numbered from 1 in the order the router starts them."""
    position: int
    """Every stream entry at or below this position is covered: its effects are in the state."""
    state: bytes


def encode_state(state: Any) -> bytes:
    """Plain data (dicts, lists, strs, ints, floats, bools, None) as compressed bytes."""
    return _FORMAT + zlib.compress(msgspec.msgpack.encode(state), 1)


def decode_state(blob: bytes) -> Any:
    """The plain data :func:`encode_state` encoded."""
    if not blob.startswith(_FORMAT):
        msg = "not a rayworker checkpoint (unknown header); it was written by another program"
        raise StateError(msg)
    try:
        return msgspec.msgpack.decode(zlib.decompress(blob[len(_FORMAT) :]))
    except (zlib.error, msgspec.DecodeError) as exc:
        msg = f"checkpoint is corrupt ({exc}); delete it with `rayworker run --fresh-state`"
        raise StateError(msg) from exc
