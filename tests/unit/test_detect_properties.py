"""Property tests: the detector equals the brute-force oracle, whatever the arrival order,
batch split, snapshot point or other tenants' traffic."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayworker import detect as detect_module
from rayworker.alerts import AlertBook
from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.rules import RulePack, builtin_pack, parse_rules
from tests.oracle import oracle

BASE = datetime(2026, 1, 5, 21, 58, tzinfo=UTC)
CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))

SMALL_RULES = parse_rules(
    {
        "rules": [
            {
                "id": "fails",
                "kind": "threshold",
                "title": "fails {count}",
                "description": "{count} failures by {principalId}",
                "severity": "HIGH",
                "filter": {"field": "status", "equals": "failure"},
                "group_by": ["principalId"],
                "condition": {"gte": 3},
                "window": "30s",
                "suppression": "60s",
            },
            {
                "id": "exactly_two",
                "kind": "threshold",
                "title": "two",
                "description": "{count} reads",
                "severity": "LOW",
                "filter": {"field": "action", "equals": "data.read"},
                "group_by": ["principalId"],
                "condition": {"eq": 2},
                "window": "20s",
            },
            {
                "id": "spray",
                "kind": "distinct",
                "title": "spray",
                "description": "{count} principals from {sessionContext_ipAddress}",
                "severity": "HIGH",
                "filter": {"field": "status", "equals": "failure"},
                "group_by": ["sessionContext.ipAddress"],
                "skip_missing": True,
                "field": "principalId",
                "condition": {"gte": 2},
                "window": "40s",
            },
            {
                "id": "seq",
                "kind": "sequence",
                "title": "seq",
                "description": "brute force on {principalId}",
                "severity": "CRITICAL",
                "group_by": ["principalId"],
                "steps": [
                    {
                        "name": "fail",
                        "filter": {"field": "status", "equals": "failure"},
                        "count": 2,
                    },
                    {"name": "ok", "filter": {"field": "status", "equals": "success"}},
                ],
                "window": "45s",
            },
            {
                "id": "night",
                "kind": "time_of_day",
                "title": "night",
                "description": "{count} at night",
                "severity": "LOW",
                "filter": {"field": "status", "equals": "success"},
                "business_hours": {"start": "06:00", "end": "22:00"},
                "condition": {"gte": 2},
                "window": "60s",
            },
        ]
    },
    origin="test",
)

TENANTS = ["org-a", "org-b", "org-c"]
PRINCIPALS = ["u1", "u2", "u3", None]
IPS = ["10.0.0.1", "10.0.0.2", None]
ACTIONS = ["auth.login", "auth.login.failure", "data.read", "data.export"]


@st.composite
def streams(draw: st.DrawFn, *, max_events: int = 60) -> list[bytes]:
    """Random multi-tenant streams, out of order within (and sometimes beyond) the lateness."""
    n = draw(st.integers(min_value=1, max_value=max_events))
    events = []
    t = 0.0
    for k in range(n):
        t += draw(st.floats(min_value=0, max_value=8, allow_nan=False))
        event: dict[str, Any] = {
            "timestamp": (BASE + timedelta(seconds=round(t, 3))).isoformat().replace("+00:00", "Z"),
            "action": draw(st.sampled_from(ACTIONS)),
            "status": draw(st.sampled_from(["success", "failure", "attempt"])),
            "organizationId": draw(st.sampled_from(TENANTS)),
        }
        principal = draw(st.sampled_from(PRINCIPALS))
        if principal is not None:
            event["principalId"] = principal
        ip = draw(st.sampled_from(IPS))
        if ip is not None:
            event["sessionContext"] = {"ipAddress": ip}
        if draw(st.booleans()):
            event["id"] = f"e{k}"
        events.append((t, event))
    # Arrival order: sort by a jittered time (within lateness mostly, sometimes beyond it).
    jitter = draw(st.lists(st.floats(0, 90, allow_nan=False), min_size=n, max_size=n))
    order = sorted(range(n), key=lambda i: events[i][0] + jitter[i])
    lines = [msgspec.json.encode(events[i][1]) for i in order]
    # Redeliveries: repeat a few lines later in the stream.
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(draw(st.integers(0, len(lines))), lines[draw(st.integers(0, len(lines) - 1))])
    return lines


def run(
    lines: list[bytes],
    pack: RulePack,
    cuts: list[int] | None = None,
    snapshot_at: int | None = None,
    *,
    vectorised: bool = True,
) -> dict[str, Any]:
    """Run the detector over lines split at cuts, optionally snapshotting and restoring.

    ``vectorised`` chooses between the numpy path for in-order keys (taken from the first
    event on) and the per-event path for everything.
    """
    saved = detect_module._VECTOR_MIN
    detect_module._VECTOR_MIN = 1 if vectorised else 10**9
    try:
        return _run(lines, pack, cuts, snapshot_at)
    finally:
        detect_module._VECTOR_MIN = saved


def _run(
    lines: list[bytes],
    pack: RulePack,
    cuts: list[int] | None,
    snapshot_at: int | None,
) -> dict[str, Any]:
    config = DetectorConfig()
    det = Detector(pack, config=config, clock=CLOCK)
    book = AlertBook()
    bounds = sorted({0, len(lines), *(cuts or [])})
    for start, end in itertools.pairwise(bounds):
        if snapshot_at is not None and start >= snapshot_at:
            blob = msgspec.json.encode(det.snapshot())
            det = Detector.restore(pack, msgspec.json.decode(blob), config=config, clock=CLOCK)
            snapshot_at = None
        book.update(det.process_lines(lines[start:end], start_index=start).alerts)
    book.update(det.flush().alerts)
    return {a.id: a for a in book}


def comparable(alerts: dict[str, Any], *, watermark: bool = True) -> dict[str, tuple[Any, ...]]:
    """The fields the oracle defines, per alert id."""
    return {
        aid: (
            a.tenant_id,
            a.rule_id,
            tuple(sorted(a.group.items(), key=str)),
            a.first_seen_us,
            a.last_seen_us,
            a.occurrences,
            a.count,
            tuple(a.evidence_ids),
            a.period_start_us,
            a.watermark_us if (watermark and a.rule_id != "exactly_two") else None,
        )
        for aid, a in alerts.items()
    }


# RAYWORKER_PROPERTY_EXAMPLES=1500 runs a deeper search (minutes instead of seconds).
EXAMPLES = int(os.environ.get("RAYWORKER_PROPERTY_EXAMPLES", "150"))
PROPS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(streams())
def test_detector_equals_oracle(lines: list[bytes]) -> None:
    """Alerts equal the brute-force oracle's, out-of-order and duplicate events included."""
    want = comparable(oracle(lines, SMALL_RULES))
    assert comparable(run(lines, SMALL_RULES, vectorised=True)) == want
    assert comparable(run(lines, SMALL_RULES, vectorised=False)) == want


@PROPS
@given(streams(), st.lists(st.integers(0, 70), max_size=6))
def test_batch_split_invariance(lines: list[bytes], cuts: list[int]) -> None:
    """The folded alerts do not depend on how the input is split into batches."""
    assert comparable(run(lines, SMALL_RULES, cuts)) == comparable(run(lines, SMALL_RULES))


@PROPS
@given(streams(), st.integers(0, 70), st.lists(st.integers(0, 70), max_size=4))
def test_snapshot_restore_invariance(lines: list[bytes], at: int, cuts: list[int]) -> None:
    """A snapshot and restore at any batch boundary changes nothing."""
    cuts = [*cuts, at]
    whole = run(lines, SMALL_RULES, cuts)
    restored = run(lines, SMALL_RULES, cuts, snapshot_at=at)
    assert comparable(restored) == comparable(whole)


@PROPS
@given(streams(), streams())
def test_other_tenants_never_change_a_tenants_alerts(mine: list[bytes], other: list[bytes]) -> None:
    """Interleaving another tenant's events never changes a tenant's alerts."""
    mine = [line for line in mine if b'"org-a"' in line]
    noise = [line.replace(b'"org-a"', b'"org-z"') for line in other]
    noise = [line for line in noise if b'"org-z"' in line]
    merged = []
    for k in range(max(len(mine), len(noise))):
        merged.extend(mine[k : k + 1])
        merged.extend(noise[k : k + 1])
    alone = comparable(run(mine, SMALL_RULES))
    mixed = {k: v for k, v in comparable(run(merged, SMALL_RULES)).items() if v[0] == "org-a"}
    assert mixed == alone


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(max_events=80))
def test_builtin_pack_equals_oracle(lines: list[bytes]) -> None:
    """The built-in pack also equals the oracle on random streams."""
    pack = builtin_pack()
    assert comparable(run(lines, pack)) == comparable(oracle(lines, pack))
