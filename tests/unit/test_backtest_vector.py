"""The backtest's NumPy kernels against brute force, and random traffic against the detector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayworker import AlertBook, Detector, DetectorConfig, FixedClock
from rayworker import backtest_vector as kernels
from rayworker.backtest import line_batches, run_backtest
from rayworker.backtest_points import Sweep, SweepPoint, point_overrides
from rayworker.rules import Overrides, RulePack, builtin_pack, parse_rules

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
T0 = datetime(2026, 1, 5, 23, 0, tzinfo=UTC)

events_st = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, 4)), min_size=0, max_size=60
)


def sorted_columns(
    rows: list[tuple[int, int, int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys, times and tags sorted by (key, time)."""
    rows = sorted(rows)
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    times = np.array([r[1] for r in rows], dtype=np.int64)
    tags = np.array([r[2] for r in rows], dtype=np.int64)
    return keys, times, tags


def brute_counts(rows: list[tuple[int, int, int]], width: int, *, distinct: bool) -> list[int]:
    """Per event (in sorted order): its key's events, or distinct tags, in (t - width, t]."""
    rows = sorted(rows)
    out = []
    for k, t, _ in rows:
        inside = [r for r in rows if r[0] == k and t - width < r[1] <= t]
        out.append(len({r[2] for r in inside}) if distinct else len(inside))
    return out


@pytest.fixture(params=["composite", "lexsort"])
def branch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a kernel test on the int64 composite search and on the merged lexsort."""
    if request.param == "lexsort":
        monkeypatch.setattr(kernels, "_LIMIT", 0)
    return str(request.param)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=events_st, width=st.integers(1, 30))
def test_window_counts_equal_brute_force(
    rows: list[tuple[int, int, int]], width: int, branch: str
) -> None:
    """Counts and distinct counts over (t - W, t] equal a recount, on both search branches."""
    keys, times, tags = sorted_columns(rows)
    widths = np.full(len(keys), width, dtype=np.int64)
    assert kernels.window_counts(keys, times, widths).tolist() == brute_counts(
        rows, width, distinct=False
    )
    assert kernels.window_counts(keys, times, widths, tags).tolist() == brute_counts(
        rows, width, distinct=True
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=events_st, span=st.integers(0, 30))
def test_max_in_span_equals_brute_force(
    rows: list[tuple[int, int, int]], span: int, branch: str
) -> None:
    """The busiest [t, t + span] of any key is found on both search branches."""
    keys, times, _ = sorted_columns(rows)
    want = max(
        (sum(1 for r in rows if r[0] == k and t <= r[1] <= t + span) for k, t, _ in rows),
        default=0,
    )
    assert kernels.max_in_span(keys, times, np.full(len(keys), span, dtype=np.int64)) == want


def test_sort_unique_drops_repeats_of_one_event_only() -> None:
    """Same key, time and id is one event; a different id at the same instant is another."""
    keys = np.array([1, 0, 1, 1, 0], dtype=np.int64)
    times = np.array([5, 5, 5, 5, 5], dtype=np.int64)
    ids = ["b", "x", "a", "b", "x"]
    order = kernels.sort_unique(keys, times, ids)
    assert [(int(keys[i]), ids[i]) for i in order] == [(0, "x"), (1, "a"), (1, "b")]


def test_wide_spans_take_the_lexsort_branch() -> None:
    """Keys times a span beyond 64 bits are still ranked exactly."""
    keys = np.array([0, 0, 3_000_000_000, 3_000_000_000], dtype=np.int64)
    times = np.array([0, 4_000_000_000, 1, 4_000_000_000], dtype=np.int64)
    widths = np.full(4, 4_000_000_000, dtype=np.int64)
    assert kernels.window_counts(keys, times, widths).tolist() == [1, 1, 1, 2]


line_st = st.tuples(
    st.integers(0, 1),  # tenant
    st.integers(0, 2),  # principal
    st.integers(0, 3),  # IP
    st.integers(0, 900),  # seconds after T0 (T0 is 23:00 UTC: off hours)
    st.sampled_from(["fail", "fail", "ok", "read"]),
    st.integers(0, 5),  # id (repeats are redeliveries when the time matches too)
)


def to_line(row: tuple[int, int, int, int, str, int]) -> bytes:
    """An event line from a drawn row."""
    tenant, principal, ip, seconds, kind, ident = row
    action, status = {
        "fail": ("auth.login.failure", "failure"),
        "ok": ("auth.login.success", "success"),
        "read": ("data.read", "success"),
    }[kind]
    stamp = (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return msgspec.json.encode(
        {
            "id": f"e{ident}-{seconds}",
            "timestamp": stamp,
            "organizationId": f"org-{tenant}",
            "principalId": f"u-{principal}",
            "action": action,
            "status": status,
            "sessionContext": {"ipAddress": f"10.0.0.{ip}"},
        }
    )


SEQUENCE_PACK = parse_rules(
    {
        "rules": [
            {
                "id": "fail_ok_fail",
                "kind": "sequence",
                "title": "t",
                "description": "d",
                "severity": "HIGH",
                "filter": {"field": "action", "startswith": "auth."},
                "group_by": ["principalId"],
                "window": "5m",
                "steps": [
                    {
                        "name": "fails",
                        "filter": {"field": "status", "equals": "failure"},
                        "count": 2,
                    },
                    {"name": "login", "filter": {"field": "action", "startswith": "auth.login"}},
                    {
                        "name": "again",
                        "filter": {"field": "status", "equals": "failure"},
                        "count": 2,
                    },
                ],
            }
        ]
    },
    origin="test",
)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(line_st, min_size=1, max_size=80),
    rule_id=st.sampled_from(
        [
            "failed_auth",
            "password_spraying",
            "off_hours",
            "data_velocity",
            "brute_force_success",
            "fail_ok_fail",
        ]
    ),
    thresholds=st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True),
    windows=st.lists(st.sampled_from([30.0, 60.0, 300.0]), min_size=1, max_size=2, unique=True),
    lateness=st.sampled_from([0.0, 20.0, 120.0]),
    suppression=st.sampled_from([60.0, 300.0]),
    shuffle=st.integers(0, 600),
)
def test_random_traffic_equals_the_detector(
    rows: list[tuple[int, int, int, int, str, int]],
    rule_id: str,
    thresholds: list[int],
    windows: list[float],
    lateness: float,
    suppression: float,
    shuffle: int,
) -> None:
    """Any arrival order, redeliveries and lateness: each point equals the detector."""
    # Arrival order: event time plus a drawn delay of up to `shuffle` seconds per event.
    rows = [r for _, r in sorted((r[3] + (r[5] * 97) % (shuffle + 1), r) for r in rows)]
    pack = SEQUENCE_PACK if rule_id == "fail_ok_fail" else builtin_pack()
    rule = pack.get(rule_id)
    lines = [to_line(r) for r in rows]
    config = DetectorConfig(allowed_lateness_s=lateness, suppression_s=suppression)
    counted = None if rule.kind == "sequence" else tuple(sorted(thresholds))
    sweep = Sweep(counted, tuple(sorted(windows)))
    result = run_backtest(line_batches(lines, 7), pack, rule_id, sweep, config=config, clock=CLOCK)
    assert {p.path for p in result.points} == {"vectorised"}
    for found in result.points:
        point: SweepPoint = found.point
        overrides = point_overrides(Overrides.empty(), pack, rule_id, point)
        detector = Detector(RulePack(rules=(rule,)), overrides, config, CLOCK)
        book = AlertBook()
        for start in range(0, len(lines), 7):
            book.update(detector.process_lines(lines[start : start + 7], start_index=start).alerts)
        book.update(detector.flush().alerts)
        want = {(a.id, a.first_seen_us, a.last_seen_us, a.occurrences, a.count) for a in book}
        got = {
            (a.id, a.first_seen_us, a.last_seen_us, a.occurrences, a.count)
            for a in result.alerts(point)
        }
        assert got == want
