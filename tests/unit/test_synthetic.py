"""The synthetic traffic generator: deterministic, skewed, bounded, and its attacks detectable."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from rayworker.alerts import AlertBook
from rayworker.clock import FixedClock
from rayworker.detect import Detector
from rayworker.rules import builtin_pack
from rayworker.sources.synthetic import SyntheticConfig, generate, generate_labelled

SMALL = SyntheticConfig(
    events=20_000,
    tenants=10,
    principals=400,
    duration_s=1800,
    start=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
    attacks_per_tenant_hour=6.0,
    seed=3,
)


def stamp(line: bytes) -> datetime:
    """The event time of a line."""
    return datetime.fromisoformat(msgspec.json.decode(line)["timestamp"].replace("Z", "+00:00"))


def test_deterministic_for_a_seed() -> None:
    """The same config gives the same lines; another seed gives others."""
    assert list(generate(SMALL)) == list(generate(SMALL))
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 4})
    assert list(generate(other)) != list(generate(SMALL))


def test_exact_count_and_valid_events() -> None:
    """Exactly `events` lines, each a JSON object with a tenant and a Z timestamp in the span."""
    lines = list(generate(SMALL))
    assert len(lines) == SMALL.events
    end = SMALL.start + timedelta(seconds=SMALL.duration_s)
    for line in lines:
        event = msgspec.json.decode(line)
        assert event["organizationId"].startswith("org-")
        assert event["timestamp"].endswith("Z")
        assert SMALL.start <= stamp(line) <= end


def test_tenants_are_skewed() -> None:
    """The busiest tenant sends several times the median tenant's traffic."""
    config = SyntheticConfig(events=50_000, tenants=100, principals=5_000, duration_s=600)
    counts = sorted(
        Counter(msgspec.json.decode(line)["organizationId"] for line in generate(config)).values()
    )
    assert counts[-1] > 5 * counts[len(counts) // 2]


def test_disorder_is_bounded() -> None:
    """With disorder_ms, no event arrives more than that far behind an earlier one."""
    config = SyntheticConfig(**{**SMALL.__dict__, "disorder_ms": 2000})
    latest = datetime.min.replace(tzinfo=UTC)
    worst = timedelta(0)
    for line in generate(config):
        t = stamp(line)
        worst = max(worst, latest - t)
        latest = max(latest, t)
    assert timedelta(0) < worst <= timedelta(milliseconds=2000)


def test_bad_config_names_the_field() -> None:
    """An invalid config raises ValueError naming the field."""
    with pytest.raises(ValueError, match="events"):
        SyntheticConfig(events=-1)


def test_labelled_attacks_are_detected() -> None:
    """Every labelled attack raises an alert of its rule for its tenant."""
    lines, labels = generate_labelled(SMALL)
    assert labels
    end = SMALL.start + timedelta(seconds=SMALL.duration_s)
    assert all(SMALL.start <= label.start <= label.end <= end for label in labels)
    detector = Detector(builtin_pack(), clock=FixedClock(datetime(2030, 1, 1, tzinfo=UTC)))
    book = AlertBook()
    for i in range(0, len(lines), 5_000):
        book.update(detector.process_lines(lines[i : i + 5_000]).alerts)
    book.update(detector.flush().alerts)
    fired = {(alert.rule_id, alert.tenant_id) for alert in book}
    missed = [label for label in labels if (label.scenario, label.tenant) not in fired]
    assert missed == []
