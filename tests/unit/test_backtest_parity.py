"""A backtest point's alerts equal the detector's (and replay's) under that point's overrides."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import rayworker
from rayworker import AlertBook, Detector, DetectorConfig, FixedClock
from rayworker.backtest import line_batches, run_backtest
from rayworker.backtest_points import SweepPoint, parse_sweep, point_overrides
from rayworker.rules import Overrides, RulePack, builtin_pack, parse_overrides
from rayworker.sources.synthetic import SyntheticConfig, generate_labelled

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
SAMPLE = Path(rayworker.__file__).parent / "data" / "sample_events.jsonl"
PACK = builtin_pack()
SWEEPS: dict[str, list[str]] = {
    "failed_auth": ["threshold=1,2,3,5,7", "window=30s,5m"],
    "unauthorized_access": ["threshold=1..4", "window=2m,10m"],
    "data_velocity": ["threshold=3,10,25,50", "window=10s,1m"],
    "bulk_operation": ["threshold=5,20,100", "window=1m,5m"],
    "off_hours": ["threshold=1,2,5,20", "window=5m,1h"],
    "password_spraying": ["threshold=2,3,5,10", "window=1m,10m"],
    "brute_force_success": ["window=1m,3m,10m"],
}
BASE_OVERRIDES = {
    "defaults": {"rules": {"failed_auth": {"window": "2m"}}},
    "tenants": {
        "org-001": {
            "suppression": "10m",
            "timezone": "America/New_York",
            "rules": {"failed_auth": {"condition": {"gte": 2, "lt": 6}}},
        },
        "org-002": {"rules": {"data_velocity": {"enabled": False}, "off_hours": {"window": "7m"}}},
        "org-003": {"rules": {"password_spraying": {"threshold": 3, "suppression": "1m"}}},
    },
}

Signature = tuple[int, int, int, int, int]


def detector_alerts(
    lines: list[bytes],
    rule_id: str,
    overrides: Overrides,
    config: DetectorConfig,
    pack: RulePack | None = None,
) -> dict[str, Signature]:
    """The rule's alerts from a detector over the lines in replay's batches.

    The rule alone by default (rules never affect each other's alerts; the CLI test compares
    with `rayworker replay` of the whole pack).
    """
    pack = pack if pack is not None else RulePack(rules=(PACK.get(rule_id),))
    detector = Detector(pack, overrides, config, CLOCK)
    book = AlertBook()
    for start in range(0, len(lines), 10_000):
        book.update(detector.process_lines(lines[start : start + 10_000], start_index=start).alerts)
    book.update(detector.flush().alerts)
    return {
        a.id: (a.first_seen_us, a.last_seen_us, a.occurrences, a.count, a.period_start_us)
        for a in book
        if a.rule_id == rule_id
    }


def assert_parity(
    lines: list[bytes],
    rule_id: str,
    specs: list[str],
    *,
    overrides: Overrides | None = None,
    config: DetectorConfig | None = None,
    detector_only: bool = False,
) -> int:
    """Every point equals the detector; returns the number of alerts over all points."""
    base = overrides if overrides is not None else Overrides.empty()
    config = config if config is not None else DetectorConfig()
    sweep = parse_sweep(specs)
    result = run_backtest(
        line_batches(lines, 3_000),
        PACK,
        rule_id,
        sweep,
        overrides=base,
        config=config,
        clock=CLOCK,
        detector_only=detector_only,
    )
    total = 0
    for found in result.points:
        point = found.point
        want = detector_alerts(lines, rule_id, point_overrides(base, PACK, rule_id, point), config)
        alerts = result.alerts(point)
        got = {
            a.id: (a.first_seen_us, a.last_seen_us, a.occurrences, a.count, a.period_start_us)
            for a in alerts
        }
        assert got == want, f"{rule_id} {point.label}"
        assert found.alerts == len(want)
        assert sum(found.tenant_alerts.values()) == len(want)
        total += len(want)
    return total


@cache
def sample_lines() -> list[bytes]:
    """The bundled sample events."""
    return SAMPLE.read_bytes().splitlines()


@cache
def synthetic_lines() -> list[bytes]:
    """Disordered multi-tenant traffic with attacks, redeliveries and some late events."""
    config = SyntheticConfig(
        events=16_000,
        tenants=5,
        principals=150,
        duration_s=5_400,
        start=datetime(2026, 1, 5, 21, 30, tzinfo=UTC),
        attacks_per_tenant_hour=8.0,
        disorder_ms=40_000,
        with_ids=True,
        seed=11,
    )
    lines, _labels = generate_labelled(config)
    rnd = random.Random(5)
    out = list(lines)
    for _ in range(400):  # redeliveries, a little later in the stream
        i = rnd.randrange(len(lines))
        out.insert(min(len(out), i + rnd.randrange(0, 300)), lines[i])
    return out


@pytest.mark.parametrize("rule_id", list(SWEEPS))
def test_sample_every_point_equals_the_detector(rule_id: str) -> None:
    """On the bundled sample, every point of every built-in rule's sweep equals the detector."""
    assert assert_parity(sample_lines(), rule_id, SWEEPS[rule_id]) > 0


@pytest.mark.parametrize("rule_id", list(SWEEPS))
def test_disordered_synthetic_traffic_equals_the_detector(rule_id: str) -> None:
    """Out-of-order, redelivered, partly late multi-tenant traffic: every point is exact."""
    config = DetectorConfig(allowed_lateness_s=30.0)
    assert assert_parity(synthetic_lines(), rule_id, SWEEPS[rule_id], config=config) > 0


@pytest.mark.parametrize(
    ("rule_id", "specs"),
    [
        ("failed_auth", ["window=1m,2m,5m"]),  # org-001 keeps its non-monotone condition
        ("failed_auth", ["threshold=2,4", "window=2m"]),  # replaces org-001's condition
        ("off_hours", ["threshold=1,3"]),  # org-002 keeps its own window, org-001 its zone
        ("password_spraying", ["window=2m,10m"]),  # org-003 keeps threshold and suppression
        ("data_velocity", ["threshold=5,20"]),  # disabled for org-002
    ],
)
def test_base_overrides_are_kept_under_every_point(rule_id: str, specs: list[str]) -> None:
    """Suppression, enabled, timezones and unswept per-tenant settings survive the sweep."""
    base = parse_overrides(BASE_OVERRIDES, PACK, origin="test")
    assert_parity(synthetic_lines(), rule_id, specs, overrides=base)


def test_detector_path_equals_the_vectorised_path() -> None:
    """Forcing every point onto the detector gives the same per-point results."""
    sweep = parse_sweep(["threshold=2..5", "window=1m,5m"])
    common: dict[str, Any] = {"clock": CLOCK, "config": DetectorConfig(allowed_lateness_s=30.0)}
    lines = synthetic_lines()
    fast = run_backtest(line_batches(lines), PACK, "failed_auth", sweep, **common)
    slow = run_backtest(
        line_batches(lines), PACK, "failed_auth", sweep, detector_only=True, **common
    )
    assert {p.path for p in fast.points} == {"vectorised"}
    assert {p.path for p in slow.points} == {"detector"}
    for a, b in zip(fast.points, slow.points, strict=True):
        assert (a.alerts, a.tenant_alerts) == (b.alerts, b.tenant_alerts)
        assert fast.alerts(a.point) == slow.alerts(b.point)


def test_sequence_rules_are_vectorised_and_equal_the_detector_path() -> None:
    """brute_force_success points are vectorised, and equal the detector run per point."""
    sweep = parse_sweep(["window=1m,3m,10m"])
    lines = synthetic_lines()
    fast = run_backtest(line_batches(lines), PACK, "brute_force_success", sweep, clock=CLOCK)
    slow = run_backtest(
        line_batches(lines), PACK, "brute_force_success", sweep, clock=CLOCK, detector_only=True
    )
    assert {p.path for p in fast.points} == {"vectorised"}
    assert {p.path for p in slow.points} == {"detector"}
    for a, b in zip(fast.points, slow.points, strict=True):
        assert a.alerts == b.alerts > 0
        assert fast.alerts(a.point) == slow.alerts(b.point)


def test_points_that_could_reach_the_state_cap_run_on_the_detector() -> None:
    """A key holding more events than max_events_per_key could is left to the detector."""
    config = DetectorConfig(max_events_per_key=10)
    lines = sample_lines()
    result = run_backtest(
        line_batches(lines),
        PACK,
        "data_velocity",
        parse_sweep(["threshold=3,50"]),
        config=config,
        clock=CLOCK,
    )
    assert [p.path for p in result.points] == ["detector", "detector"]
    assert_parity(lines, "data_velocity", ["threshold=3,50"], config=config)


def test_sequence_rules_refuse_a_threshold_sweep() -> None:
    """Sweeping a sequence rule's threshold fails before reading, naming the rule."""
    with pytest.raises(rayworker.ConfigError, match=r"brute_force_success.*sequence"):
        run_backtest(line_batches([]), PACK, "brute_force_success", parse_sweep(["threshold=2"]))


def test_an_unswept_point_is_the_configuration() -> None:
    """A sweep of one value per parameter equals the detector with plain overrides."""
    lines = sample_lines()
    result = run_backtest(
        line_batches(lines), PACK, "failed_auth", parse_sweep(["threshold=3"]), clock=CLOCK
    )
    overrides = parse_overrides(
        {"defaults": {"rules": {"failed_auth": {"threshold": 3}}}}, PACK, origin="t"
    )
    want = detector_alerts(lines, "failed_auth", overrides, DetectorConfig())
    assert {a.id for a in result.alerts(SweepPoint(None, 3))} == set(want)
