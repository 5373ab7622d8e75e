"""Event-time sliding-window state of one (tenant, rule, group) key.

A :class:`KeyWindow` keeps the matching events of one key that can still matter, sorted by
``(event time, event id)``. Sorting by id among equal times makes every result independent of
arrival order. Positions are evaluated over the window ``(t - W, t]`` that ends at their own
event, so events at the same instant always see each other.

What is retained, given the tenant's watermark ``wm`` (max event time seen minus the allowed
lateness):

* events with ``t <= wm - W`` are evicted: no event that may still arrive (``t >= wm``) can
  share a window with them;
* settled events that only complete sequences (see :meth:`KeyWindow.compact`) are evicted;
* among *settled* events (``t < wm``) only the latest ``keep`` are kept when the rule's
  condition is monotone (``gte``/``gt``): for a count condition with lower bound ``N`` they
  decide every unsettled window exactly, and the reported count ``min(count, keep)`` stays
  exact (see ``detect.py``). Distinct rules keep the latest occurrence of each value instead.

So a threshold rule needs at most ``keep`` timestamps per key plus the events of the last
``lateness`` seconds. A window can be snapshotted to plain lists and restored.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Sequence
from typing import Any

__all__ = [
    "KeyWindow",
    "distinct_at",
    "sequence_at",
    "window_range",
]


class KeyWindow:
    """The retained matching events of one key, sorted by (time, id), with hit flags."""

    __slots__ = ("hits", "ids", "settled", "tags", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.ids: list[str] = []
        self.tags: list[Any] = []
        self.hits = bytearray()
        # Leading positions already evaluated at settlement (non-monotone rules only).
        self.settled = 0

    def __len__(self) -> int:
        return len(self.times)

    def insert(self, t: int, event_id: str, tag: Any = None) -> int | None:
        """Insert an event in (time, id) order; None when the same event is already here."""
        times = self.times
        if not times or t > times[-1]:
            pos = len(times)
        else:
            lo = bisect_left(times, t)
            hi = bisect_right(times, t, lo)
            if lo == hi:
                pos = lo
            else:
                pos = bisect_left(self.ids, event_id, lo, hi)
                if pos < hi and self.ids[pos] == event_id:
                    return None
        times.insert(pos, t)
        self.ids.insert(pos, event_id)
        self.tags.insert(pos, tag)
        self.hits.insert(pos, 0)
        if pos < self.settled:
            self.settled += 1
        return pos

    def find(self, t: int, event_id: str) -> int:
        """Position of a retained event, or -1."""
        lo = bisect_left(self.times, t)
        hi = bisect_right(self.times, t, lo)
        pos = bisect_left(self.ids, event_id, lo, hi)
        return pos if pos < hi and self.ids[pos] == event_id else -1

    def drop_first(self, n: int) -> None:
        """Forget the ``n`` oldest events."""
        if n <= 0:
            return
        del self.times[:n], self.ids[:n], self.tags[:n], self.hits[:n]
        self.settled = max(0, self.settled - n)

    def drop_positions(self, positions: Sequence[int]) -> None:
        """Forget the events at the given ascending positions."""
        if not positions:
            return
        gone = set(positions)
        keep = [i for i in range(len(self.times)) if i not in gone]
        self.times = [self.times[i] for i in keep]
        self.ids = [self.ids[i] for i in keep]
        self.tags = [self.tags[i] for i in keep]
        self.hits = bytearray(self.hits[i] for i in keep)
        self.settled -= sum(1 for p in positions if p < self.settled)

    def compact(
        self,
        wm: int,
        window: int,
        keep: int | None,
        *,
        distinct: bool,
        finished_tag: int | None = None,
    ) -> None:
        """Evict what no future window can see; cap the settled region (see module doc).

        ``finished_tag``: settled events whose tag is exactly this are dropped too. Sequence
        rules pass the last step's bit when that step needs a single event: such an event has
        already been evaluated and can never serve as an earlier step.
        """
        times = self.times
        self.drop_first(bisect_right(times, wm - window))
        if finished_tag is not None:
            settled_end = bisect_left(times, wm)
            tags = self.tags
            self.drop_positions([p for p in range(settled_end) if tags[p] == finished_tag])
        if keep is None:
            return
        settled_end = bisect_left(times, wm)
        if distinct:
            seen: set[Hashable] = set()
            drop: list[int] = []
            for pos in range(settled_end - 1, -1, -1):
                tag = self.tags[pos]
                if tag in seen or len(seen) >= keep:
                    drop.append(pos)
                else:
                    seen.add(tag)
            drop.reverse()
            self.drop_positions(drop)
        elif settled_end > keep:
            self.drop_first(settled_end - keep)

    def snapshot(self) -> list[Any]:
        """Plain lists: [times, ids, tags, hits, settled]."""
        return [list(self.times), list(self.ids), list(self.tags), list(self.hits), self.settled]

    @classmethod
    def restore(cls, data: Sequence[Any]) -> KeyWindow:
        """Rebuild a window from :meth:`snapshot` output."""
        times, ids, tags, hits, settled = data
        if not (len(times) == len(ids) == len(tags) == len(hits)):
            msg = "window snapshot has columns of different lengths; it is corrupt"
            raise ValueError(msg)
        window = cls()
        window.times = [int(t) for t in times]
        window.ids = [str(i) for i in ids]
        window.tags = [_hashable_tag(t) for t in tags]
        window.hits = bytearray(int(h) for h in hits)
        window.settled = int(settled)
        return window


def _hashable_tag(tag: Any) -> Any:
    # Snapshots travel as JSON/msgpack, which turn tuples into lists.
    return tuple(tag) if isinstance(tag, list) else tag


def window_range(window: KeyWindow, pos: int, width: int) -> tuple[int, int]:
    """The slice ``[lo, hi)`` of events in ``(t - width, t]`` for the event at ``pos``."""
    times = window.times
    t = times[pos]
    hi = bisect_right(times, t, pos)
    lo = bisect_right(times, t - width, 0, pos + 1)
    return lo, hi


def distinct_at(window: KeyWindow, lo: int, hi: int) -> dict[Any, int]:
    """Each distinct tag in ``[lo, hi)`` mapped to the position of its latest occurrence."""
    latest: dict[Any, int] = {}
    tags = window.tags
    for pos in range(lo, hi):
        latest[tags[pos]] = pos
    return latest


def sequence_at(window: KeyWindow, pos: int, width: int, counts: Sequence[int]) -> list[int] | None:
    """Positions completing the steps in order and ending at ``pos``, or None.

    Tags are bit masks of the steps an event matches. Steps are matched greedily in (time, id)
    order within ``(t - width, t]``; greedy earliest matching finds a completion whenever one
    exists. The event at ``pos`` must match the last step and completes it.
    """
    tags = window.tags
    last = len(counts) - 1
    if not tags[pos] & (1 << last):
        return None
    lo = bisect_right(window.times, window.times[pos] - width, 0, pos + 1)
    stage = 0
    have = 0
    used: list[int] = []
    for p in range(lo, pos):
        if stage == last and have == counts[last] - 1:
            break
        if tags[p] & (1 << stage):
            used.append(p)
            have += 1
            if have == counts[stage] and stage < last:
                stage += 1
                have = 0
    if stage == last and have == counts[last] - 1:
        used.append(pos)
        return used
    return None
