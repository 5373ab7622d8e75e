"""Repeating values decoded as shared literals: the same events as plain decoding, always."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from rayworker.events import EventDecoder, RejectReason
from rayworker.known_values import INTERNED_FIELDS, KnownValues

FIELDS = ("timestamp", "action", "status", "organizationId", "principalId", "outcomeDescription")


def event(i: int, **changes: Any) -> dict[str, Any]:
    """A valid event whose tenant and action repeat over i."""
    value: dict[str, Any] = {
        "timestamp": f"2026-01-05T10:00:{i % 60:02d}Z",
        "action": ["auth.login", "record.read"][i % 2],
        "status": "success",
        "organizationId": f"org-{i % 3}",
        "principalId": f"user-{i}",
        "outcomeDescription": ["ok", "Search"][i % 2],
    }
    value.update(changes)
    return {k: v for k, v in value.items() if v is not None}


def encode(events: list[dict[str, Any]]) -> list[bytes]:
    """JSON lines."""
    return [msgspec.json.encode(e) for e in events]


def plain_fields(decoder: EventDecoder, lines: list[bytes]) -> list[tuple[Any, ...]]:
    """Each decoded event's fields, as plain values."""
    batch = decoder.decode(lines).batch
    return [tuple(batch.values(path)[i] for path in FIELDS) for i in range(len(batch))]


def test_known_values_decode_as_one_shared_string() -> None:
    """Once a batch taught the decoder a tenant, later events share one string object for it."""
    decoder = EventDecoder()
    decoder.decode(encode([event(i) for i in range(6)]))
    batch = decoder.decode(encode([event(i) for i in range(6)])).batch
    tenants = batch.values("organizationId")
    assert tenants[0] is tenants[3]
    assert decoder.known.known("organization_id") == {"org-0", "org-1", "org-2"}


def test_a_new_value_mid_batch_is_decoded_plainly_and_learned() -> None:
    """A value not yet known decodes exactly (that line plainly) and is known afterwards."""
    decoder = EventDecoder()
    reference = EventDecoder()
    decoder.decode(encode([event(i) for i in range(4)]))
    lines = encode([event(i) for i in range(3)] + [event(9, action="export.bulk")] + [event(4)])
    assert plain_fields(decoder, lines) == plain_fields(reference, lines)
    assert "export.bulk" in decoder.known.known("action")


def test_a_field_with_too_many_values_stays_plain() -> None:
    """A field past the limit is dropped from interning for good, and still decodes exactly."""
    known = KnownValues(msgspec.defstruct("W", [("action", str)], rename="camel"), limit=3)
    rows = [msgspec.defstruct("R", [(n, Any, None) for n in INTERNED_FIELDS])() for _ in range(4)]
    for i, row in enumerate(rows):
        row.action = f"a{i}"  # type: ignore[attr-defined]
    assert known.learn(rows[:3])
    assert known.known("action") == {"a0", "a1", "a2"}
    assert known.learn(rows)
    assert known.known("action") == frozenset()
    assert not known.learn(rows)


def test_invalid_lines_are_rejected_as_without_known_values() -> None:
    """A bad line in a batch decoded with known values gets the same rejection as before."""
    decoder = EventDecoder()
    decoder.decode(encode([event(i) for i in range(4)]))
    lines = [*encode([event(0)]), b'{"action": "x"', *encode([event(1, status="maybe")])]
    result = decoder.decode(lines)
    reasons = [r.reason for r in result.rejections]
    assert reasons == [RejectReason.MALFORMED_JSON, RejectReason.INVALID_VALUE]
    assert len(result.batch) == 1


_values = st.sampled_from(["a", "b", "c", "Ω", ""])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.fixed_dictionaries(
                {"organizationId": _values, "action": _values, "outcomeDescription": _values}
            ),
            max_size=8,
        ),
        max_size=5,
    )
)
def test_decoding_with_known_values_equals_plain_decoding(
    batches: list[list[dict[str, Any]]],
) -> None:
    """Over any sequence of batches, a learning decoder gives what a fresh one does."""
    learning = EventDecoder()
    for rows in batches:
        lines = encode([event(i, **row) for i, row in enumerate(rows)])
        fresh = EventDecoder()
        got, want = learning.decode(lines), fresh.decode(lines)
        assert plain_fields(learning, lines) == plain_fields(fresh, lines)
        assert [r.reason for r in got.rejections] == [r.reason for r in want.rejections]
