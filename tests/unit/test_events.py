"""The event schema and the batch decoder: what is accepted, what is rejected and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rayworker.events import (
    MAX_LINE_BYTES,
    MAX_STRING_CHARS,
    AuditEvent,
    EventDecoder,
    RejectReason,
    decode_lines,
    derive_event_id,
)

GOOD: dict[str, Any] = {
    "timestamp": "2026-01-05T10:00:00.123Z",
    "action": "auth.login.failure",
    "status": "failure",
    "organizationId": "org-1",
    "principalId": "alice",
    "sessionContext": {"sessionId": "s1", "ipAddress": "10.0.0.1", "userAgent": "ua"},
    "recordCount": 3,
}


def line(**changes: Any) -> bytes:
    """GOOD with some fields changed (None removes a field)."""
    event = dict(GOOD)
    for name, value in changes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return msgspec.json.encode(event)


def test_good_event_decodes_with_utc_microseconds() -> None:
    """A valid event decodes; its time is microseconds since the epoch, UTC."""
    result = decode_lines([line()])
    assert result.rejections == []
    assert len(result.batch) == 1
    expected = datetime(2026, 1, 5, 10, 0, 0, 123000, tzinfo=UTC)
    assert result.batch.ts[0] == (expected - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    assert result.batch.values("sessionContext.ipAddress") == ["10.0.0.1"]


def test_offsets_are_honoured() -> None:
    """A +02:00 offset is the same instant as two hours earlier in UTC."""
    a = decode_lines([line(timestamp="2026-01-05T12:00:00+02:00")]).batch.ts[0]
    b = decode_lines([line(timestamp="2026-01-05T10:00:00Z")]).batch.ts[0]
    assert a == b


def test_naive_timestamp_is_utc_and_counted() -> None:
    """A timestamp without offset is read as UTC (not local time) and counted."""
    result = decode_lines([line(timestamp="2026-01-05T10:00:00")])
    assert result.batch.naive == 1
    utc = decode_lines([line(timestamp="2026-01-05T10:00:00Z")]).batch.ts[0]
    assert result.batch.ts[0] == utc


def test_naive_timestamp_can_be_rejected() -> None:
    """With naive_timestamps='reject' the event is rejected with a fix in the message."""
    decoder = EventDecoder(naive_timestamps="reject")
    result = decoder.decode([line(timestamp="2026-01-05T10:00:00"), line()])
    assert len(result.batch) == 1
    (rejection,) = result.rejections
    assert rejection.reason is RejectReason.NAIVE_TIMESTAMP
    assert "offset" in rejection.message


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b'{"timestamp": "2026', RejectReason.MALFORMED_JSON, None),
        (b"[1, 2]", RejectReason.NOT_AN_OBJECT, None),
        (line(organizationId=None), RejectReason.MISSING_FIELD, "organizationId"),
        (line(timestamp=None), RejectReason.MISSING_FIELD, "timestamp"),
        (line(organizationId=5), RejectReason.WRONG_TYPE, "organizationId"),
        (
            line(sessionContext={"ipAddress": 3}),
            RejectReason.WRONG_TYPE,
            "sessionContext.ipAddress",
        ),
        (line(status="maybe"), RejectReason.INVALID_VALUE, "status"),
        (line(action=""), RejectReason.INVALID_VALUE, "action"),
        (line(recordCount=-1), RejectReason.INVALID_VALUE, "recordCount"),
        (line(timestamp="05/01/2026 10:00"), RejectReason.BAD_TIMESTAMP, "timestamp"),
        (line(timestamp="2026-01-05T25:61:00Z"), RejectReason.BAD_TIMESTAMP, "timestamp"),
        (line(action="a" * (MAX_STRING_CHARS + 1)), RejectReason.TOO_LARGE, "action"),
        (line(padding="x" * MAX_LINE_BYTES), RejectReason.TOO_LARGE, None),
    ],
)
def test_each_kind_of_bad_input_is_rejected_with_reason(
    raw: bytes, reason: RejectReason, field: str | None
) -> None:
    """Each kind of bad input becomes a rejection naming reason and field; others still flow."""
    result = decode_lines([line(), raw, line()], start_index=10)
    assert len(result.batch) == 2
    (rejection,) = result.rejections
    assert (rejection.reason, rejection.field) == (reason, field)
    assert rejection.index == 11
    assert rejection.raw == raw
    assert rejection.message
    record = rejection.to_json()
    assert record["reason"] == reason.value
    assert record["payload"] == raw.decode("utf-8", errors="replace")


def test_rejection_keeps_tenant_when_readable() -> None:
    """A rejected event whose tenant can be read is attributed to that tenant."""
    (rejection,) = decode_lines([line(status="maybe")]).rejections
    assert rejection.tenant == "org-1"


def test_blank_lines_are_not_events() -> None:
    """Blank lines are skipped, not rejected."""
    result = decode_lines([b"", line(), b"   "])
    assert (len(result.batch), result.rejections) == (1, [])


def test_extra_fields_are_kept() -> None:
    """Unknown fields stay in the raw bytes and in AuditEvent, and rules can read them."""
    raw = line(details={"reason": "bulk"}, customerTier="gold")
    assert AuditEvent.model_validate_json(raw).model_extra == {
        "details": {"reason": "bulk"},
        "customerTier": "gold",
    }
    decoder = EventDecoder(["details.reason", "customerTier"])
    batch = decoder.decode([raw]).batch
    assert batch.values("details.reason") == ["bulk"]
    assert batch.values("customerTier") == ["gold"]
    assert batch.event_dict(0)["customerTier"] == "gold"


def test_derived_id_is_deterministic_and_given_id_wins() -> None:
    """Events without id get the same derived id every time; a producer's id is kept."""
    raw = line()
    assert decode_lines([raw]).batch.ids() == decode_lines([raw]).batch.ids()
    assert decode_lines([raw]).batch.ids() == [derive_event_id(raw)]
    assert decode_lines([line(id="evt-9")]).batch.ids() == ["evt-9"]


def test_factorised_columns_keep_true_apart_from_one() -> None:
    """Factorising a mixed column never confuses true with 1."""
    decoder = EventDecoder(["flag"])
    batch = decoder.decode([line(flag=True), line(flag=1), line(flag=1.0)]).batch
    codes, vocab = batch.codes("flag")
    assert vocab[codes[0]] is True
    assert vocab[codes[1]] == 1
    assert codes[0] != codes[1]


def test_audit_event_rejects_what_the_decoder_rejects() -> None:
    """The pydantic edge model refuses a missing tenant and a bad status, like the decoder."""
    with pytest.raises(ValidationError):
        AuditEvent.model_validate_json(line(organizationId=None))
    with pytest.raises(ValidationError):
        AuditEvent.model_validate_json(line(status="maybe"))
    event = AuditEvent.model_validate_json(line(timestamp="2026-01-05T10:00:00"))
    assert event.timestamp.tzinfo is not None


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=6),
    st.sampled_from(["2026-01-05T10:00:00Z", "2026-01-05T10:00:00+05:30", "nope", ""]),
)
fields = st.sampled_from(
    ["timestamp", "action", "status", "organizationId", "principalId", "recordCount", "id"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(fields, values, max_size=7))
def test_pydantic_and_msgspec_views_agree(changes: dict[str, Any]) -> None:
    """The edge model and the hot-path decoder accept and reject the same events."""
    event = dict(GOOD)
    event.update(changes)
    raw = msgspec.json.encode({k: v for k, v in event.items() if v is not None})
    decoded = decode_lines([raw])
    try:
        model = AuditEvent.model_validate_json(raw)
    except ValidationError:
        assert len(decoded.batch) == 0
        return
    assert len(decoded.batch) == 1, decoded.rejections
    stamp = model.timestamp.astimezone(UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert decoded.batch.ts[0] == (stamp - epoch) // timedelta(microseconds=1)
