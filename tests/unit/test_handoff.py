"""Handing key groups and their state between shards mid-stream loses and doubles nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from rayworker.alerts import AlertBook
from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.errors import StateError
from rayworker.handoff import merge_states, split_state
from rayworker.partition import Partitioner
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack
from rayworker.sources.synthetic import SyntheticConfig, generate

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
GROUPS = 64


def _lines() -> list[bytes]:
    config = SyntheticConfig(
        events=24_000,
        tenants=10,
        principals=300,
        duration_s=1800,
        disorder_ms=20_000,
        attacks_per_tenant_hour=8,
        seed=5,
    )
    return list(generate(config))


def _single(lines: list[bytes]) -> dict[str, dict[str, Any]]:
    detector = Detector(builtin_pack(), None, config=DetectorConfig(), clock=CLOCK)
    book = AlertBook()
    for start in range(0, len(lines), 1000):
        book.update(detector.process_lines(lines[start : start + 1000], start_index=start).alerts)
    book.update(detector.flush().alerts)
    return {a.id: a.to_json() for a in book}


def _hand_off(
    detectors: dict[int, Detector], old: Assignment, new: Assignment
) -> dict[int, Detector]:
    """What a rescale does on the shards: givers split, takers merge, leavers go."""
    pack, shard_config = builtin_pack(), DetectorConfig(max_future_s=None)
    moves = old.moves(new)
    outgoing: dict[int, list[dict[str, Any]]] = {}
    for giver in {frm for frm, _ in moves.values()}:
        leaving = [g for g, (frm, _) in moves.items() if frm == giver]
        kept, moved = split_state(detectors[giver].snapshot(), leaving, groups=GROUPS)
        # Through msgpack, as between actors: the hand-off must survive encoding.
        moved = msgspec.msgpack.decode(msgspec.msgpack.encode(moved))
        for to in {moves[g][1] for g in leaving}:
            part, _ = split_state(moved, [g for g in leaving if moves[g][1] != to], groups=GROUPS)
            outgoing.setdefault(to, []).append(part)
        detectors[giver] = Detector.restore(pack, kept, None, shard_config, CLOCK)
    result: dict[int, Detector] = {}
    for shard in new.shards:
        if shard in outgoing:
            base = (
                [detectors[shard].snapshot()]
                if shard in detectors
                else [Detector(pack, None, shard_config, CLOCK).snapshot()]
            )
            merged = merge_states(base + outgoing[shard])
            result[shard] = Detector.restore(pack, merged, None, shard_config, CLOCK)
        else:
            result[shard] = detectors[shard]
    return result


def test_rescaling_mid_stream_gives_the_single_detector_alerts() -> None:
    """2 -> 3 -> 1 -> 4 shards at three points of the stream: alerts equal one detector's."""
    lines = _lines()
    expected = _single(lines)
    pack = builtin_pack()
    assignment = Assignment.balanced(2, groups=GROUPS)
    router = Partitioner(pack, assignment, DetectorConfig(), CLOCK)
    shard_config = DetectorConfig(max_future_s=None)
    detectors = {s: Detector(pack, None, shard_config, CLOCK) for s in assignment.shards}
    plan = {6_000: [0, 1, 2], 12_000: [2], 18_000: [2, 5, 6, 7]}
    book = AlertBook()
    for start in range(0, len(lines), 500):
        if start in plan:
            new = assignment.rebalance(plan[start])
            detectors = _hand_off(detectors, assignment, new)
            router.reassign(new)
            assignment = new
        part = router.split_lines(lines[start : start + 500], start_index=start)
        for shard, sub in part.shards.items():
            result = detectors[shard].process_routed(
                sub.lines(), sub.wm_after, sub.owned, sub.watermarks
            )
            book.update(result.alerts)
    for detector in detectors.values():
        book.update(detector.flush().alerts)
    assert len(expected) > 20
    assert {a.id: a.to_json() for a in book} == expected
    assert set(detectors) == {2, 5, 6, 7}


def test_split_then_merge_is_the_original_state() -> None:
    """Splitting a state by key groups and merging the halves gives back every key."""
    pack = builtin_pack()
    detector = Detector(pack, None, DetectorConfig(), CLOCK)
    detector.process_lines(_lines()[:8000])
    snapshot = detector.snapshot()
    kept, moved = split_state(snapshot, range(0, GROUPS, 3), groups=GROUPS)
    assert any(data["keys"] for data in moved["rules"].values())
    assert any(data["keys"] for data in kept["rules"].values())
    merged = merge_states([kept, moved])
    for rule_id, data in snapshot["rules"].items():
        got = merged["rules"][rule_id]
        assert sorted(map(repr, got["keys"])) == sorted(map(repr, data["keys"]))
        assert sorted(map(repr, got["open"])) == sorted(map(repr, data["open"]))
    assert merged["max_seen"] == snapshot["max_seen"]


def test_moved_state_carries_only_its_tenants_watermarks() -> None:
    """The moved half names only tenants whose keys it carries."""
    detector = Detector(builtin_pack(), None, DetectorConfig(), CLOCK)
    detector.process_lines(_lines()[:4000])
    snapshot = detector.snapshot()
    _, moved = split_state(snapshot, [7], groups=GROUPS)
    tenants = {
        key[0] for data in moved["rules"].values() for key, *_ in [*data["keys"], *data["open"]]
    }
    assert set(moved["max_seen"]) == tenants


def test_merging_a_key_held_twice_is_refused() -> None:
    """Two shards holding the same key means two owners of a key group: refuse to merge."""
    detector = Detector(builtin_pack(), None, DetectorConfig(), CLOCK)
    detector.process_lines(_lines()[:2000])
    snapshot = detector.snapshot()
    with pytest.raises(StateError, match="held by two shards"):
        merge_states([snapshot, snapshot])


def test_merging_different_rule_versions_is_refused() -> None:
    """States of different rule versions cannot be merged; the message says why."""
    detector = Detector(builtin_pack(), None, DetectorConfig(), CLOCK)
    detector.process_lines(_lines()[:2000])
    kept, moved = split_state(detector.snapshot(), range(32), groups=GROUPS)
    rule = next(iter(moved["rules"]))
    moved["rules"][rule]["version"] = "changed"
    with pytest.raises(StateError, match="same rules"):
        merge_states([kept, moved])


def test_not_a_snapshot_is_refused() -> None:
    """Anything but a detector snapshot fails with a clear message."""
    with pytest.raises(StateError, match="not a detector snapshot"):
        split_state({"format": "other"}, [1], groups=GROUPS)
    with pytest.raises(StateError, match="at least one"):
        merge_states([])
