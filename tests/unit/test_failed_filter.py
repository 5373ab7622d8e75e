"""Choosing failed notifications by age: by their failed_at, else when the store took them,
and never when they cannot be dated."""

from __future__ import annotations

from datetime import UTC, datetime

from rayworker.notify.failed import FailedFilter, FailedNotification

CUTOFF = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def test_older_than_reads_failed_at_first() -> None:
    """A record's failed_at decides, even when the store took it later (or earlier)."""
    old = FailedNotification("a", {"failed_at": "2026-11-30T10:00:00+00:00"}, CUTOFF + 50)
    new = FailedNotification("b", {"failed_at": "2026-12-01T00:00:01+00:00"}, CUTOFF - 50)
    before = FailedFilter(before=CUTOFF)
    assert before(old)
    assert not before(new)


def test_older_than_falls_back_to_when_the_store_took_it() -> None:
    """Without a readable failed_at, a stream record is dated by its entry id's time."""
    before = FailedFilter(before=CUTOFF)
    assert before(FailedNotification("1-0", {"failed_at": "yesterday"}, CUTOFF - 1))
    assert not before(FailedNotification("2-0", {}, CUTOFF + 1))


def test_a_record_that_cannot_be_dated_is_never_chosen_by_age() -> None:
    """Retention must not delete what it cannot date; other criteria still choose it."""
    undated = FailedNotification("x", {"tenant": "org-1"})
    assert not FailedFilter(before=CUTOFF)(undated)
    assert FailedFilter(tenant="org-1")(undated)
