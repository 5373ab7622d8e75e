"""Every rejection and late event names the input line it came from, even when blank or
rejected lines come before it in the same batch: a dead letter must carry its own bytes."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.events import EventDecoder, RejectReason, derive_event_id
from rayworker.rules import builtin_pack

_NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _event(stamp: str, tenant: str = "t1") -> bytes:
    return json.dumps(
        {"timestamp": stamp, "action": "auth.login", "status": "failure", "organizationId": tenant}
    ).encode()


_LINES = [
    b"",
    _event("2026-01-05T11:00:00Z"),  # 1: sets t1's watermark
    b'{"broken',  # 2: malformed
    b"   ",  # 3: blank
    _event("2026-01-05T09:00:00Z"),  # 4: late (two hours behind, lateness 60 s)
    _event("2027-01-01T00:00:00Z"),  # 5: in the future
    b'{"timestamp":"2026-01-05T11:00:00Z"}',  # 6: no tenant
    _event("2026-01-05T09:30:00Z", "t2"),  # 7: another tenant, fine
]


@pytest.mark.parametrize("start", [0, 1000])
def test_late_and_future_events_name_their_own_line_after_rejected_and_blank_lines(
    start: int,
) -> None:
    """With blank and malformed lines before them, the late event's index is line 4 and the
    future event's rejection is line 5 (plus the batch's start index), holding their bytes."""
    detector = Detector(builtin_pack(), clock=FixedClock(_NOW))
    result = detector.process_lines(_LINES, start_index=start)
    [late] = result.late
    assert late.index == start + 4
    by_reason = {r.reason: r for r in result.rejections}
    future = by_reason[RejectReason.FUTURE_TIMESTAMP]
    assert future.index == start + 5
    assert future.raw == _LINES[5]
    assert by_reason[RejectReason.MALFORMED_JSON].index == start + 2
    assert by_reason[RejectReason.MISSING_FIELD].index == start + 6


def test_a_rejected_naive_timestamp_names_its_line() -> None:
    """Under naive_timestamps=reject, the rejection of a naive timestamp carries its line
    index, after a malformed line, and the events after it keep theirs."""
    decoder = EventDecoder(naive_timestamps="reject")
    lines = [b'{"broken', _event("2026-01-05T11:00:00"), _event("2026-01-05T11:00:01Z")]
    decoded = decoder.decode(lines, start_index=10)
    naive = [r for r in decoded.rejections if r.reason is RejectReason.NAIVE_TIMESTAMP]
    assert [r.index for r in naive] == [11]
    assert decoded.batch.line_of(0) == 2


def test_config_lateness_still_applies_with_line_indexes() -> None:
    """The late event's index is its line also when only lateness decides (no rejections)."""
    detector = Detector(
        builtin_pack(), clock=FixedClock(_NOW), config=DetectorConfig(allowed_lateness_s=0)
    )
    lines = [_event("2026-01-05T11:00:00Z"), b"", _event("2026-01-05T10:59:59Z")]
    [late] = detector.process_lines(lines).late
    assert late.index == 2


_KINDS = ("good", "blank", "malformed", "tenantless", "future", "late")


def _line(kind: str, n: int) -> bytes:
    minute = f"2026-01-05T11:59:{n % 60:02d}Z"  # within the lateness of the first events
    if kind == "good":
        return _event(minute, f"t{n % 3}")
    if kind == "blank":
        return b"" if n % 2 else b"  "
    if kind == "malformed":
        return b'{"broken": ' + str(n).encode()
    if kind == "tenantless":
        return json.dumps({"timestamp": minute, "action": "a", "status": "success"}).encode()
    if kind == "future":
        return _event(f"2027-01-01T00:{n % 60:02d}:00Z", f"t{n % 3}")
    return _event(f"2026-01-05T08:{n % 60:02d}:00Z", f"t{n % 3}")  # hours behind: late


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(_KINDS), min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=5),
)
def test_every_rejection_and_late_event_points_at_its_own_line(
    kinds: list[str], cuts: list[int]
) -> None:
    """Over any mix of good, blank, malformed, tenantless, future and late lines, cut into
    batches anywhere, each rejection's index holds exactly its raw bytes and each late
    event's index holds the line its id and timestamp come from."""
    lines = [_event("2026-01-05T11:59:00Z", f"t{k}") for k in range(3)]  # set watermarks
    lines += [_line(kind, n) for n, kind in enumerate(kinds)]
    detector = Detector(builtin_pack(), clock=FixedClock(_NOW))
    bounds = sorted({0, len(lines), *(c for c in cuts if c < len(lines))})
    rejections, late = [], []
    for start, end in itertools.pairwise(bounds):
        result = detector.process_lines(lines[start:end], start_index=start)
        rejections += result.rejections
        late += result.late
    for rejection in rejections:
        assert lines[rejection.index] == rejection.raw
    for event in late:
        assert derive_event_id(lines[event.index]) == event.event_id
    expected_late = sum(kind == "late" for kind in kinds)
    assert len(late) == expected_late
