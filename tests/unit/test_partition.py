"""A router's partitioner plus shard detectors equal one detector over the whole stream."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

import msgspec
import numpy as np
import pytest

from rayworker.alerts import AlertBook
from rayworker.clock import FixedClock
from rayworker.detect import (
    PRIMARY_BIT,
    Detector,
    DetectorConfig,
    MetricDeltas,
    group_signatures,
)
from rayworker.partition import Partitioner, ShardBatch
from rayworker.routing import Assignment
from rayworker.rules import Overrides, builtin_pack, load_overrides, parse_rules
from rayworker.sources.synthetic import SyntheticConfig, generate

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))


def _sample() -> list[bytes]:
    text = resources.files("rayworker").joinpath("data/sample_events.jsonl").read_bytes()
    return text.splitlines()


def _single(
    lines: list[bytes], batch: int, overrides: Overrides | None = None
) -> tuple[AlertBook, MetricDeltas]:
    detector = Detector(builtin_pack(), overrides, config=DetectorConfig(), clock=CLOCK)
    book, metrics = AlertBook(), MetricDeltas()
    for start in range(0, len(lines), batch):
        result = detector.process_lines(lines[start : start + batch], start_index=start)
        book.update(result.alerts)
        metrics.merge(result.metrics)
    final = detector.flush()
    book.update(final.alerts)
    return book, metrics


def _sharded(
    lines: list[bytes],
    batch: int,
    shards: int,
    *,
    groups: int = 256,
    overrides: Overrides | None = None,
) -> tuple[AlertBook, MetricDeltas, dict[int, int]]:
    pack = builtin_pack()
    config = DetectorConfig()
    assignment = Assignment.balanced(shards, groups=groups)
    router = Partitioner(pack, assignment, config, CLOCK, overrides=overrides)
    shard_config = DetectorConfig(max_future_s=None)
    detectors = {
        s: Detector(pack, overrides, config=shard_config, clock=CLOCK) for s in range(shards)
    }
    book, metrics = AlertBook(), MetricDeltas()
    received = dict.fromkeys(range(shards), 0)
    for start in range(0, len(lines), batch):
        part = router.split_lines(lines[start : start + batch], start_index=start)
        metrics.merge(part.metrics)
        for shard, sub in part.shards.items():
            received[shard] += len(sub)
            result = detectors[shard].process_routed(
                sub.lines(), sub.wm_after, sub.owned, sub.watermarks
            )
            book.update(result.alerts)
            metrics.merge(result.metrics)
    for detector in detectors.values():
        final = detector.flush()
        book.update(final.alerts)
        metrics.merge(final.metrics)
    return book, metrics, received


def _states(book: AlertBook) -> dict[str, dict[str, object]]:
    return {a.id: a.to_json() for a in book}


@pytest.mark.parametrize(("shards", "batch"), [(1, 1000), (2, 500), (5, 97)])
def test_sample_alerts_equal_single_detector(shards: int, batch: int) -> None:
    """Sharded detection of the bundled sample gives the same alerts, state for state."""
    lines = _sample()
    single, single_metrics = _single(lines, 1000)
    sharded, sharded_metrics, _ = _sharded(lines, batch, shards)
    assert len(single) > 0
    assert _states(sharded) == _states(single)
    assert sharded_metrics.events == single_metrics.events
    assert sharded_metrics.alerts == single_metrics.alerts
    assert sharded_metrics.late == single_metrics.late
    assert sum(sharded_metrics.rejected.values()) == sum(single_metrics.rejected.values())


def test_synthetic_disordered_alerts_equal_single_detector() -> None:
    """Out-of-order synthetic traffic with attacks shards without losing or adding alerts."""
    config = SyntheticConfig(
        events=30_000,
        tenants=12,
        principals=400,
        duration_s=1800,
        disorder_ms=20_000,
        attacks_per_tenant_hour=6,
        seed=3,
    )
    lines = list(generate(config))
    single, single_metrics = _single(lines, 2000)
    sharded, sharded_metrics, received = _sharded(lines, 700, 4, groups=64)
    assert len(single) > 10
    assert _states(sharded) == _states(single)
    assert sharded_metrics.duplicates == single_metrics.duplicates
    assert all(n > 0 for n in received.values())


def test_every_key_lives_on_one_shard() -> None:
    """Under each signature an event has at most one owning shard, and exactly one primary."""
    lines = _sample()[:3000]
    pack = builtin_pack()
    router = Partitioner(pack, Assignment.balanced(3), DetectorConfig(), CLOCK)
    part = router.split_lines(lines)
    signatures = len(group_signatures(pack))
    owners: dict[bytes, list[int]] = {}
    primaries: dict[bytes, int] = {}
    for sub in part.shards.values():
        for raw, bits in zip(sub.lines(), sub.owned.tolist(), strict=True):
            slots = owners.setdefault(raw, [0] * signatures)
            for s in range(signatures):
                slots[s] += (bits >> s) & 1
            primaries[raw] = primaries.get(raw, 0) + ((bits >> PRIMARY_BIT) & 1)
    assert owners
    assert all(max(slots) <= 1 and sum(slots) >= 1 for slots in owners.values())
    assert set(primaries.values()) == {1}


def test_events_travel_only_where_a_rule_could_count_them() -> None:
    """Events no rule of a signature matches are not sent for it: fewer copies than signatures."""
    lines = _sample()
    pack = builtin_pack()
    router = Partitioner(pack, Assignment.balanced(4), DetectorConfig(), CLOCK)
    part = router.split_lines(lines)
    copies = sum(len(sub) for sub in part.shards.values())
    assert 0 < copies < part.accepted * len(group_signatures(pack))


def test_shard_batch_round_trips_and_concatenates() -> None:
    """A shard batch keeps raw events byte for byte, including newlines inside an event."""
    raw = [b'{"a": 1}', b'{"b":\n 2}', b""]
    wm = np.array([1, 2, 3], dtype=np.int64)
    owned = np.array([1, 2, 3], dtype=np.uint64)
    one = ShardBatch.build(raw, wm, owned, {"t": 5})
    two = ShardBatch.build([b"x"], wm[:1], owned[:1], {"t": 9, "u": 1})
    both = ShardBatch.concat([one, two])
    assert one.lines() == raw
    assert both.lines() == [*raw, b"x"]
    assert both.watermarks == {"t": 9, "u": 1}
    assert both.wm_after.tolist() == [1, 2, 3, 1]


def test_snapshot_restores_watermarks() -> None:
    """A restored partitioner finds the same late events as the original would."""
    lines = _sample()
    pack = builtin_pack()
    first = Partitioner(pack, Assignment.balanced(2), DetectorConfig(), CLOCK)
    first.split_lines(lines[:5000])
    again = Partitioner(pack, Assignment.balanced(2), DetectorConfig(), CLOCK)
    again.restore(first.snapshot())
    a = first.split_lines(lines[5000:])
    b = again.split_lines(lines[5000:])
    assert [e.event_id for e in a.late] == [e.event_id for e in b.late]
    assert a.accepted == b.accepted


def test_off_hours_routing_follows_each_tenants_business_hours() -> None:
    """With per-tenant business hours, only off-hours events travel for the tenant-only rule."""
    config = SyntheticConfig(
        events=20_000, tenants=6, principals=200, duration_s=86_400, seed=8, disorder_ms=5_000
    )
    lines = list(generate(config))
    tenants = sorted({line.split(b'"organizationId":"')[1].split(b'"')[0] for line in lines})
    night, paris = tenants[0].decode(), tenants[1].decode()
    overrides = load_overrides(
        f"""
tenants:
  {night}:
    business_hours: {{start: "22:00", end: "06:00"}}
  {paris}:
    timezone: Europe/Paris
    business_hours: {{start: "09:00", end: "17:00", days: [mon, tue, wed, thu, fri]}}
""",
        builtin_pack(),
    )
    single, _ = _single(lines, 2000, overrides)
    sharded, _, _ = _sharded(lines, 900, 3, groups=32, overrides=overrides)
    assert any(a.rule_id == "off_hours" and a.tenant_id == night for a in single)
    assert _states(sharded) == _states(single)
    pack = builtin_pack()
    tenant_only = group_signatures(pack).index(())
    router = Partitioner(pack, Assignment.balanced(3), DetectorConfig(), CLOCK)
    part = router.split_lines(lines)
    carried = sum(
        int(((sub.owned >> np.uint64(tenant_only)) & np.uint64(1)).sum())
        for sub in part.shards.values()
    )
    assert 0 < carried < part.accepted // 2


@pytest.mark.parametrize(("copies", "expected"), [(1, ["1", "True"]), (20, ["1", "1.0", "True"])])
def test_equal_but_differently_typed_group_values_are_different_keys(
    copies: int, expected: list[str]
) -> None:
    """1, 1.0 and true are three keys for one detector (per-event and vectorised paths), as
    they are three keys for routing."""
    pack = parse_rules(
        {
            "rules": [
                {
                    "id": "by_geo",
                    "kind": "threshold",
                    "title": "geo",
                    "description": "{count} from {geo}",
                    "severity": "LOW",
                    "filter": {"field": "status", "equals": "failure"},
                    "group_by": [{"as": "geo", "coalesce": ["sessionContext.geolocation"]}],
                    "window": "1m",
                    "condition": {"gte": 2},
                }
            ]
        },
        origin="test",
    )
    lines = [
        (
            f'{{"timestamp":"2029-12-31T10:00:00.{i:03d}Z","action":"a","status":"failure",'
            f'"organizationId":"t","sessionContext":{{"geolocation":{geo}}}}}'
        ).encode()
        for i, geo in enumerate(["1", "1.0", "true", "1", "true"] * copies)
    ]
    detector = Detector(pack, clock=CLOCK)
    result = detector.process_lines(lines)
    result.alerts.extend(detector.flush().alerts)
    groups = sorted(repr(a.group["geo"]) for a in result.alerts)
    assert groups == expected
    restored = Detector.restore(
        pack, msgspec.json.decode(msgspec.json.encode(detector.snapshot())), clock=CLOCK
    )
    assert restored.snapshot() == detector.snapshot()
