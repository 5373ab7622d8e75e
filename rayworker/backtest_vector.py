"""NumPy kernels of the backtest: window counts at every event of every key, in one pass.

The events of one rule are held as parallel arrays sorted by (key code, time): ``keys`` and
``times`` (microseconds), and for distinct rules ``tags`` (a code per distinct value). The
count of an event ``q`` is taken over ``(t_q - W, t_q]`` of its key, all events at ``t_q``
included, which is the detector's window (``rayworker.windows.window_range``):

* threshold and time_of_day rules: ``hi - lo``, two ``searchsorted`` calls on a composite
  ``key * stride + time`` (or, when that would overflow 64 bits, a merged ``lexsort``);
* distinct rules: an occurrence of a value at ``a`` keeps the value present over
  ``[a, min(a + W, next occurrence))``; these intervals are disjoint per value, so the number
  of distinct values present at ``t`` is ``#{starts <= t} - #{ends <= t}`` within the key.

Pure core: NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["max_in_span", "rank_in_keys", "sequence_counts", "sort_unique", "window_counts"]

I64 = npt.NDArray[np.int64]
_LIMIT = 2**62


def sort_unique(keys: I64, times: I64, ids: Sequence[str]) -> npt.NDArray[np.intp]:
    """Indices that sort events by (key, time, id), without repeats of one (key, time, id).

    An event delivered twice is counted once by the detector; only events sharing a key and
    an instant can be repeats, so only those runs are sorted by id in Python.
    """
    order = np.lexsort((times, keys))
    if len(order) < 2:
        return order
    k, t = keys[order], times[order]
    tie = (k[1:] == k[:-1]) & (t[1:] == t[:-1])
    if not tie.any():
        return order
    starts = np.flatnonzero(np.r_[True, ~tie])
    ends = np.r_[starts[1:], len(order)]
    runs = np.flatnonzero(ends - starts > 1)
    keep = np.ones(len(order), dtype=np.bool_)
    out = order.copy()
    for r in runs.tolist():
        a, b = int(starts[r]), int(ends[r])
        by_id = sorted(order[a:b].tolist(), key=lambda i: ids[i])
        out[a:b] = by_id
        for j in range(a + 1, b):
            if ids[by_id[j - a]] == ids[by_id[j - a - 1]]:
                keep[j] = False
    return out[keep]


def rank_in_keys(
    sorted_keys: I64,
    sorted_times: I64,
    query_keys: I64,
    query_times: I64,
    side: Literal["left", "right"] = "right",
) -> I64:
    """How many (key, time) pairs of the sorted arrays sort before each query pair.

    ``side="right"`` counts pairs equal to the query too. Times may hold the int64 maximum
    as "never". A composite ``key * stride + time`` is searched when it fits in 64 bits;
    otherwise queries are merged into the pairs with a stable ``lexsort``.
    """
    n, m = len(sorted_keys), len(query_keys)
    if n == 0 or m == 0:
        return np.zeros(m, dtype=np.int64)
    never = np.iinfo(np.int64).max
    finite = sorted_times[sorted_times < never]
    low = min(int(finite.min()) if len(finite) else 0, int(query_times.min()))
    high = max(int(finite.max()) if len(finite) else 0, int(query_times.max()))
    capped = np.minimum(sorted_times, high + 1)  # "never" sorts after every query
    stride = high - low + 2
    top = max(int(sorted_keys.max()), int(query_keys.max())) + 1
    if top * stride < _LIMIT:
        return np.searchsorted(
            sorted_keys * stride + (capped - low),
            query_keys * stride + (query_times - low),
            side=side,
        ).astype(np.int64)
    pairs_first = side == "right"
    flag = np.r_[
        np.full(n, 0 if pairs_first else 1, dtype=np.int8),
        np.full(m, 1 if pairs_first else 0, dtype=np.int8),
    ]
    order = np.lexsort((flag, np.r_[capped, query_times], np.r_[sorted_keys, query_keys]))
    is_query = order >= n
    before = np.flatnonzero(is_query) - np.arange(m)
    out = np.empty(m, dtype=np.int64)
    out[order[is_query] - n] = before
    return out


def window_counts(keys: I64, times: I64, widths: I64, tags: I64 | None = None) -> I64:
    """The count (or distinct count, with ``tags``) of each event's window ``(t - W, t]``."""
    hi = rank_in_keys(keys, times, keys, times, "right")
    if tags is None:
        lo = rank_in_keys(keys, times, keys, times - widths, "right")
        return hi - lo
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    # Next occurrence of the same value in the same key (the end of this one's presence).
    by_value = np.lexsort((times, tags, keys))
    k, g, t = keys[by_value], tags[by_value], times[by_value]
    same = (k[1:] == k[:-1]) & (g[1:] == g[:-1])
    nxt = np.full(len(t), np.iinfo(np.int64).max, dtype=np.int64)
    nxt[:-1][same] = t[1:][same]
    ends_v = np.minimum(t + widths[by_value], nxt)
    by_end = np.lexsort((ends_v, k))
    end_keys, end_times = k[by_end], ends_v[by_end]
    ended = rank_in_keys(end_keys, end_times, keys, times, "right")
    return hi - ended


def sequence_counts(keys: I64, times: I64, widths: I64, steps: I64, counts: Sequence[int]) -> I64:
    """For each event: ``sum(counts)`` when it completes the sequence in its window, else 0.

    The detector's matching (``rayworker.windows.sequence_at``) is greedy in (time, id)
    order from the window's first event: step ``k`` takes the first ``counts[k]`` events
    matching it after step ``k - 1`` completed, and the event itself must match the last
    step and complete it. With a running count of each step's events, the event completing
    step ``k`` from any start is found with one ``searchsorted`` for all events at once.
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    here = np.arange(n, dtype=np.int64)
    start = rank_in_keys(keys, times, keys, times - widths, "right")
    last = len(counts) - 1
    done = ((steps >> last) & 1).astype(np.bool_)
    for k, count in enumerate(counts):
        need = count if k < last else count - 1
        if need == 0:
            continue
        running = np.zeros(n + 1, dtype=np.int64)
        np.cumsum((steps >> k) & 1, out=running[1:])
        # The event that is the need-th match of step k at or after start (n: none).
        at = np.searchsorted(running, running[start] + need, side="left") - 1
        done &= at < here
        start = np.minimum(at + 1, n)
    return np.where(done, sum(counts), 0).astype(np.int64)


def max_in_span(keys: I64, times: I64, spans: I64) -> int:
    """The most events of one key within ``[t, t + span]`` of any of its events."""
    if len(keys) == 0:
        return 0
    first = rank_in_keys(keys, times, keys, times, "left")
    last = rank_in_keys(keys, times, keys, times + spans, "right")
    return int((last - first).max())
