"""The dead-letter stream in /readyz and /metrics: graded on how recent its newest record is."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from rayworker.health import ComponentHealth, HealthReport, Status, grade_dead_letters
from rayworker.settings import HealthThresholds
from rayworker.telemetry.exposition import render_pipeline


def test_a_recent_dead_letter_is_a_warning_and_an_old_one_is_not() -> None:
    """Newest record younger than dead_letter_recent_s: WARNING; older, or none: OK."""
    thresholds = HealthThresholds(dead_letter_recent_s=600)
    assert grade_dead_letters(5.0, thresholds) is Status.WARNING
    assert grade_dead_letters(599.9, thresholds) is Status.WARNING
    assert grade_dead_letters(600.0, thresholds) is Status.OK
    assert grade_dead_letters(None, thresholds) is Status.OK


def test_dead_letters_are_never_critical_however_recent() -> None:
    """A stream full of fresh dead letters stays WARNING: bad input is not unreadiness."""
    assert grade_dead_letters(0.0, HealthThresholds()) is Status.WARNING


def test_the_recent_window_must_be_positive() -> None:
    """A zero window is refused, naming the field."""
    with pytest.raises(ValidationError, match="dead_letter_recent_s"):
        HealthThresholds(dead_letter_recent_s=0)


def test_metrics_expose_the_dead_letter_count_and_newest_age() -> None:
    """/metrics carries the stream's record count and the newest record's age, by stream."""
    detail = {"stream": "rw:dead", "length": 42, "newest_age_s": 12.5, "newest_reason": "late"}
    report = HealthReport.of(
        [ComponentHealth("dead_letters", Status.WARNING, "42 dead letters", detail)],
        datetime(2026, 3, 10, tzinfo=UTC),
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render_pipeline(report, prefix="rw"))
        for s in family.samples
    }
    assert samples[("rw_dead_letter_entries", (("stream", "rw:dead"),))] == 42
    assert samples[("rw_dead_letter_newest_age_seconds", (("stream", "rw:dead"),))] == 12.5


def test_metrics_expose_the_failed_notification_count_and_newest_age() -> None:
    """/metrics carries how many notifications were dead-lettered and how recently, by store."""
    detail = {"store": "rw:notify-dlq", "length": 3, "newest_age_s": 4.0}
    report = HealthReport.of(
        [ComponentHealth("failed_notifications", Status.WARNING, "3 failed", detail)],
        datetime(2026, 3, 10, tzinfo=UTC),
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render_pipeline(report, prefix="rw"))
        for s in family.samples
    }
    assert samples[("rw_failed_notifications", (("store", "rw:notify-dlq"),))] == 3
    assert (
        samples[("rw_failed_notification_newest_age_seconds", (("store", "rw:notify-dlq"),))] == 4.0
    )
