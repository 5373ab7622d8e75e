"""A fixed-bucket latency histogram and percentiles estimated from its buckets (pure).

Latencies (milliseconds) are counted into buckets with fixed upper bounds, the way a
Prometheus histogram does: bucket ``i`` holds values ``v`` with
``BOUNDS_MS[i-1] < v <= BOUNDS_MS[i]`` (the first bucket starts at 0), and the last bucket
(``+Inf``) holds everything above ``BOUNDS_MS[-1]``. Counts from many processes simply add
up, which a running average (the original worker's ``(old + x) / 2``) cannot do.

Percentiles are estimated from the buckets (the same method as Prometheus'
``histogram_quantile``)::

    rank  = q * total
    i     = the first bucket whose cumulative count >= rank
    value = lower(i) + (upper(i) - lower(i)) * (rank - cumulative(i-1)) / count(i)

that is, linear interpolation inside the bucket, assuming its values are spread evenly. The
estimate is therefore exact only to the bucket's resolution: a true p95 of 30 ms is reported
somewhere in ``(25, 50]``. When the rank falls in the ``+Inf`` bucket the estimate is the
largest finite bound (10 000 ms): "at least that". An empty histogram reports 0.0.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BOUNDS_MS",
    "BUCKET_LABELS",
    "SUM_FIELD",
    "LatencyHistogram",
    "bucket_counts",
    "bucket_index",
    "quantile",
]

BOUNDS_MS: Final[tuple[float, ...]] = (
    1.0,
    2.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
)
"""Upper bounds (ms, inclusive) of the finite buckets; a final ``+Inf`` bucket follows."""

BUCKET_LABELS: Final[tuple[str, ...]] = (
    *(f"le:{b:g}" for b in BOUNDS_MS),
    "le:+Inf",
)
"""Stable field names of the buckets (used as hash fields by the stores)."""

SUM_FIELD: Final = "sum"
"""Field name of the sum of all observed latencies (ms)."""


def bucket_index(ms: float) -> int:
    """The bucket a latency falls in; negative values (clock skew) count in the first bucket.

    Raises ValueError for NaN, which has no place on the axis.
    """
    if math.isnan(ms):
        msg = "Got NaN for a latency. Latencies must be numbers of milliseconds."
        raise ValueError(msg)
    return bisect_left(BOUNDS_MS, ms)


def bucket_counts(latencies_ms: Iterable[float]) -> tuple[list[int], float]:
    """Bucket counts (one per label) and the sum of the latencies (negatives count as 0)."""
    counts = [0] * len(BUCKET_LABELS)
    total = 0.0
    for ms in latencies_ms:
        counts[bucket_index(ms)] += 1
        if ms > 0 and math.isfinite(ms):
            total += ms
    return counts, total


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = BOUNDS_MS) -> float:
    """Estimate the ``q`` quantile (0..1) from bucket counts by interpolating in the bucket."""
    if not 0.0 <= q <= 1.0:
        msg = f"Got {q} for q. A quantile must be between 0 and 1."
        raise ValueError(msg)
    if len(counts) != len(bounds) + 1:
        msg = f"Got {len(counts)} bucket counts for {len(bounds)} bounds; expected bounds + 1."
        raise ValueError(msg)
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = q * total
    cumulative = 0
    for i, count in enumerate(counts):
        if count > 0 and cumulative + count >= rank:
            if i == len(bounds):  # the +Inf bucket: "at least the largest finite bound"
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            upper = float(bounds[i])
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return float(bounds[-1])  # pragma: no cover - unreachable: the loop covers every rank


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Bucket counts of latencies in ms (one per :data:`BUCKET_LABELS`) and their sum."""

    counts: tuple[int, ...] = (0,) * len(BUCKET_LABELS)
    sum_ms: float = 0.0

    def __post_init__(self) -> None:
        if len(self.counts) != len(BUCKET_LABELS):
            msg = f"Got {len(self.counts)} bucket counts; expected {len(BUCKET_LABELS)}."
            raise ValueError(msg)

    @classmethod
    def of(cls, latencies_ms: Iterable[float]) -> LatencyHistogram:
        """The histogram of some latencies."""
        counts, total = bucket_counts(latencies_ms)
        return cls(tuple(counts), total)

    @classmethod
    def repeated(cls, ms: float, n: int) -> LatencyHistogram:
        """The histogram of ``n`` equal latencies (a batch's events share their batch's)."""
        counts = [0] * len(BUCKET_LABELS)
        counts[bucket_index(ms)] = n
        return cls(tuple(counts), ms * n if ms > 0 and math.isfinite(ms) else 0.0)

    @classmethod
    def from_fields(cls, fields: Mapping[str, str | int | float]) -> LatencyHistogram:
        """Rebuild from stored fields (labels and ``sum``); missing fields count as 0."""
        counts = tuple(int(fields.get(label, 0)) for label in BUCKET_LABELS)
        return cls(counts, float(fields.get(SUM_FIELD, 0.0)))

    def to_fields(self) -> dict[str, int | float]:
        """The non-zero bucket counts by label, and the sum."""
        fields: dict[str, int | float] = {
            label: n for label, n in zip(BUCKET_LABELS, self.counts, strict=True) if n
        }
        fields[SUM_FIELD] = self.sum_ms
        return fields

    def __add__(self, other: LatencyHistogram) -> LatencyHistogram:
        """Histograms add bucket by bucket."""
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return LatencyHistogram(counts, self.sum_ms + other.sum_ms)

    @property
    def count(self) -> int:
        """How many latencies were observed."""
        return sum(self.counts)

    @property
    def mean_ms(self) -> float:
        """The exact mean latency in ms (0.0 when empty)."""
        n = self.count
        return self.sum_ms / n if n else 0.0

    @property
    def buckets(self) -> tuple[tuple[float, int], ...]:
        """``(upper bound in ms, count)`` per bucket; the last bound is ``math.inf``."""
        return tuple(zip((*BOUNDS_MS, math.inf), self.counts, strict=True))

    def quantile(self, q: float) -> float:
        """The ``q`` quantile in ms, interpolated within its bucket (see the module doc)."""
        return quantile(q, self.counts)

    @property
    def p50(self) -> float:
        """Median latency in ms, estimated from the buckets."""
        return self.quantile(0.50)

    @property
    def p95(self) -> float:
        """95th percentile latency in ms, estimated from the buckets."""
        return self.quantile(0.95)

    @property
    def p99(self) -> float:
        """99th percentile latency in ms, estimated from the buckets."""
        return self.quantile(0.99)
