"""Every rejection and late event names the input line it came from, even when blank or
rejected lines come before it in the same batch: a dead letter must carry its own bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.events import EventDecoder, RejectReason
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
