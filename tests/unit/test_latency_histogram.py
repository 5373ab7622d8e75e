"""The pure latency histogram: bucketing, adding and percentiles interpolated within buckets."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rayworker.sinks.histogram import (
    BOUNDS_MS,
    BUCKET_LABELS,
    LatencyHistogram,
    bucket_index,
    quantile,
)


def _bucket_of(value: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the bucket holding ``value``."""
    i = bucket_index(value)
    lower = 0.0 if i == 0 else BOUNDS_MS[i - 1]
    upper = BOUNDS_MS[i] if i < len(BOUNDS_MS) else math.inf
    return lower, upper


def test_bounds_are_inclusive_upper_limits() -> None:
    """A value equal to a bound falls in that bound's bucket; just above goes to the next."""
    assert bucket_index(1.0) == 0
    assert bucket_index(1.0001) == 1
    assert bucket_index(10000.0) == len(BOUNDS_MS) - 1
    assert bucket_index(10000.1) == len(BOUNDS_MS)
    assert bucket_index(math.inf) == len(BOUNDS_MS)


def test_negative_latency_counts_in_first_bucket_and_not_in_sum() -> None:
    """A negative latency (clock skew) counts in the first bucket and adds nothing to the sum."""
    h = LatencyHistogram.of([-3.0, 4.0])
    assert h.counts[0] == 1
    assert h.sum_ms == 4.0


def test_nan_latency_is_refused() -> None:
    """NaN is not a latency: bucketing it raises ValueError."""
    with pytest.raises(ValueError, match="NaN"):
        LatencyHistogram.of([float("nan")])


def test_empty_histogram_reports_zero() -> None:
    """An empty histogram reports 0.0 for every percentile and the mean."""
    h = LatencyHistogram()
    assert (h.p50, h.p95, h.p99, h.mean_ms, h.count) == (0.0, 0.0, 0.0, 0.0, 0)


def test_interpolates_linearly_within_the_bucket() -> None:
    """Ten values in (10, 25]: p50 is the bucket's midpoint, as the documented formula says."""
    h = LatencyHistogram.of([20.0] * 10)
    assert h.p50 == pytest.approx(10 + 15 * 0.5)
    assert h.quantile(1.0) == pytest.approx(25.0)
    assert h.quantile(0.0) == pytest.approx(10.0)


def test_first_bucket_interpolates_from_zero() -> None:
    """The first bucket spans (0, 1]: its median is 0.5 ms."""
    assert LatencyHistogram.of([0.2, 0.9]).p50 == pytest.approx(0.5)


def test_overflow_bucket_reports_largest_finite_bound() -> None:
    """A rank in the +Inf bucket reports the largest finite bound ("at least 10 s")."""
    h = LatencyHistogram.of([1.0] * 90 + [60_000.0] * 10)
    assert h.p99 == BOUNDS_MS[-1]
    assert h.p50 <= 1.0


def test_known_distribution_percentiles_within_bucket_resolution() -> None:
    """p50/p95/p99 of a known mix fall in the buckets holding the true percentiles."""
    # 50 x 3 ms, 45 x 40 ms, 4 x 300 ms, 1 x 3000 ms: true p50=3, p95=40, p99=300.
    h = LatencyHistogram.of([3.0] * 50 + [40.0] * 45 + [300.0] * 4 + [3000.0])
    assert 2.0 < h.p50 <= 5.0
    assert 25.0 < h.p95 <= 50.0
    assert 250.0 < h.p99 <= 500.0
    assert h.p50 == pytest.approx(2 + 3 * 50 / 50)  # the rank fills the (2, 5] bucket exactly


def test_histograms_add_bucket_by_bucket() -> None:
    """Adding two histograms equals the histogram of both samples."""
    a, b = [1.5, 7.0, 99.0], [7.5, 12_000.0]
    assert LatencyHistogram.of(a) + LatencyHistogram.of(b) == LatencyHistogram.of(a + b)


def test_fields_round_trip() -> None:
    """to_fields/from_fields (as stored in a hash, values as strings) round-trip."""
    h = LatencyHistogram.of([0.5, 3.0, 3.0, 700.0, 20_000.0])
    stored = {k: str(v) for k, v in h.to_fields().items()}
    assert LatencyHistogram.from_fields(stored) == h
    assert set(h.to_fields()) <= {*BUCKET_LABELS, "sum"}


def test_quantile_argument_checks() -> None:
    """q outside [0, 1] and a wrong number of buckets raise ValueError."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        LatencyHistogram().quantile(1.5)
    with pytest.raises(ValueError, match="bounds"):
        quantile(0.5, [1, 2])
    with pytest.raises(ValueError, match="bucket counts"):
        LatencyHistogram(counts=(1, 2))


@given(
    st.lists(
        st.floats(min_value=0.001, max_value=9_999.0, allow_nan=False), min_size=1, max_size=300
    ),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_estimate_lies_in_the_true_quantiles_bucket(values: list[float], q: float) -> None:
    """Invariant: the estimate lies within the bucket holding the true (nearest-rank) quantile."""
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    lower, upper = _bucket_of(true)
    estimate = LatencyHistogram.of(values).quantile(q)
    assert lower <= estimate <= upper


def test_percentiles_are_monotone_in_q() -> None:
    """p50 <= p95 <= p99 for a random sample."""
    rng = random.Random(7)
    h = LatencyHistogram.of(rng.lognormvariate(3, 1.5) for _ in range(5000))
    assert h.p50 <= h.p95 <= h.p99
