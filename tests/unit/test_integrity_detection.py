"""Event integrity in detection: violations alert and count once, ``require`` dead-letters, and
replay (one detector) and the sharded path (router plus shards) agree."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest

from rayworker.alerts import AlertBook, alert_id, fingerprint
from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig, MetricDeltas
from rayworker.errors import ConfigError
from rayworker.events import RejectReason
from rayworker.health import render_prometheus
from rayworker.integrity import INTEGRITY_RULE_ID, IntegrityConfig, Policy, event_hash, sign
from rayworker.partition import Partitioner
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack, load_rules
from rayworker.sinks.memory_metrics import MemoryMetricsStore

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
KEYS = {"acme": b"acme-secret", "hooli": b"hooli-secret"}
T0 = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
PERIOD_US = 300 * 1_000_000


def _event(
    n: int,
    tenant: str = "acme",
    *,
    seconds: float = 0.0,
    action: str = "auth.login.failure",
    status: str = "failure",
    principal: str = "u1",
) -> dict[str, Any]:
    stamp = (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return {
        "id": f"{tenant}-{n}",
        "timestamp": stamp,
        "action": action,
        "status": status,
        "principalId": principal,
        "organizationId": tenant,
        "outcomeDescription": "Invalid password",
    }


def _signed(event: dict[str, Any], key: bytes) -> dict[str, Any]:
    digest = event_hash(event)
    return {**event, "hash": digest, "signature": sign(digest, key), "algorithm": "HMAC-SHA256"}


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def _config(default: Policy = Policy.VERIFY_IF_PRESENT, **policies: Policy) -> IntegrityConfig:
    return IntegrityConfig(default, policies, KEYS)


def _detector(integrity: IntegrityConfig | None, **config: Any) -> Detector:
    return Detector(
        builtin_pack(), config=DetectorConfig(**config), clock=CLOCK, integrity=integrity
    )


def _integrity_alerts(alerts: Any) -> list[Any]:
    return [a for a in alerts if a.rule_id == INTEGRITY_RULE_ID]


def test_a_violation_raises_one_critical_alert_with_its_evidence_and_counts() -> None:
    """Two tampered events in a period: one CRITICAL alert, both ids as evidence, metric 2."""
    events = [
        _signed(_event(i, seconds=i, action="data.read", status="success"), KEYS["acme"])
        for i in range(10)
    ]
    events[7]["principalId"] = "someone-else"
    events[3]["outcomeDescription"] = "Document read"
    result = _detector(_config()).process_lines([_line(e) for e in events])
    [alert] = _integrity_alerts(result.alerts)
    assert alert.severity == "CRITICAL"
    assert alert.type == "SECURITY"
    assert alert.tenant_id == "acme"
    assert alert.evidence_ids == ["acme-3", "acme-7"]
    assert alert.occurrences == alert.count == 2
    assert alert.metadata["hashMismatches"] == 2
    start = (alert.first_seen_us // PERIOD_US) * PERIOD_US
    assert alert.id == alert_id(fingerprint("acme", INTEGRITY_RULE_ID, {}), start)
    assert result.metrics.integrity_violations == {"acme": 2}
    assert result.metrics.events["acme"] == 10
    assert result.metrics.alerts[("acme", INTEGRITY_RULE_ID, "CRITICAL")] == 1
    assert result.metrics.alert_updates[("acme", INTEGRITY_RULE_ID)] == 1
    assert not result.rejections


def test_a_tampered_failed_login_still_counts() -> None:
    """Five failed logins whose status was forged still raise failed_auth, and the violation."""
    events = [_signed(_event(i, seconds=10 * i, status="success"), KEYS["acme"]) for i in range(5)]
    for event in events:
        event["status"] = "failure"  # the tamperer hides nothing from detection
    result = _detector(_config()).process_lines([_line(e) for e in events])
    rules = {a.rule_id for a in result.alerts}
    assert {"failed_auth", INTEGRITY_RULE_ID} <= rules
    [integrity] = _integrity_alerts(result.alerts)
    assert integrity.evidence_ids == [f"acme-{i}" for i in range(5)]
    assert result.metrics.integrity_violations["acme"] == 5


def test_require_dead_letters_unsigned_events_with_their_reason() -> None:
    """Under ``require`` an unsigned event is rejected (reason, field, tenant, payload kept)."""
    signed = _signed(_event(1), KEYS["acme"])
    unsigned = _event(2, seconds=1)
    blank = {**_signed(_event(3, seconds=2), KEYS["acme"]), "signature": ""}
    lines = [_line(signed), _line(unsigned), _line(blank)]
    result = _detector(_config(acme=Policy.REQUIRE)).process_lines(lines, start_index=100)
    assert [(r.reason, r.field, r.tenant, r.index) for r in result.rejections] == [
        (RejectReason.UNSIGNED, "signature", "acme", 101),
        (RejectReason.UNSIGNED, "signature", "acme", 102),
    ]
    assert result.rejections[0].raw == lines[1]
    assert "require" in result.rejections[0].message
    assert result.rejections[0].to_json()["reason"] == "unsigned"
    assert result.metrics.rejected[("acme", "unsigned")] == 2
    assert result.metrics.events["acme"] == 1
    assert not _integrity_alerts(result.alerts)


def test_require_refuses_what_it_cannot_verify() -> None:
    """Under ``require``: no key for the tenant, or a KMS signature, is unverifiable."""
    stranger = _signed(_event(1, tenant="initech"), b"whatever")
    kms = {**_signed(_event(2, seconds=1), KEYS["acme"]), "algorithm": "RSASSA_PSS_SHA_256"}
    result = _detector(_config(Policy.REQUIRE)).process_lines([_line(stranger), _line(kms)])
    assert [(r.reason, r.tenant) for r in result.rejections] == [
        (RejectReason.UNVERIFIABLE, "initech"),
        (RejectReason.UNVERIFIABLE, "acme"),
    ]
    assert "RSASSA_PSS_SHA_256" in result.rejections[1].message
    for rejection in result.rejections:
        assert "secret" not in rejection.message


def test_verify_if_present_accepts_unsigned_events() -> None:
    """``verify-if-present`` lets unsigned events through without a violation."""
    result = _detector(_config()).process_lines([_line(_event(i, seconds=i)) for i in range(3)])
    assert not result.rejections
    assert not result.metrics.integrity_violations
    assert result.metrics.events["acme"] == 3


def test_one_tenants_key_never_verifies_another_tenants_events() -> None:
    """Each tenant's events verify under its own key only."""
    lines = [
        _line(_signed(_event(1, "acme"), KEYS["acme"])),
        _line(_signed(_event(1, "hooli"), KEYS["hooli"])),
        _line(_signed(_event(2, "hooli", seconds=1), KEYS["acme"])),  # acme's key, hooli's event
        _line(_signed(_event(2, "acme", seconds=1), KEYS["hooli"])),
    ]
    result = _detector(_config()).process_lines(lines)
    assert result.metrics.integrity_violations == {"hooli": 1, "acme": 1}
    evidence = {a.tenant_id: a.evidence_ids for a in _integrity_alerts(result.alerts)}
    assert evidence == {"hooli": ["hooli-2"], "acme": ["acme-2"]}
    assert all(a.metadata["signatureMismatches"] == 1 for a in _integrity_alerts(result.alerts))


def test_off_means_unchecked_and_costs_nothing() -> None:
    """A tenant whose policy is off is not checked; all off builds no integrity step at all."""
    forged = {**_signed(_event(1, "hooli"), KEYS["hooli"]), "action": "data.delete"}
    result = _detector(_config(hooli=Policy.OFF)).process_lines([_line(forged)])
    assert not result.metrics.integrity_violations
    assert _detector(IntegrityConfig(keys=KEYS)).integrity is None
    assert _detector(None).integrity is None


def test_alerts_are_deduplicated_per_tenant_and_period() -> None:
    """Violations in one period fold into one alert across batches; the next period is new."""
    detector = _detector(_config(), evidence_cap=3)
    book = AlertBook()
    ids = set()
    for n, seconds in enumerate([0, 10, 20, 30, 40, 400]):
        forged = {**_signed(_event(n, seconds=seconds), KEYS["acme"]), "principalId": "x"}
        result = detector.process_lines([_line(forged)])
        alerts = _integrity_alerts(result.alerts)
        assert len(alerts) == 1
        ids.add(alerts[0].id)
        book.update(alerts)
    assert len(ids) == 2
    first, second = sorted(book, key=lambda a: a.first_seen_us)
    assert (first.occurrences, second.occurrences) == (5, 1)
    assert first.evidence_ids == ["acme-2", "acme-3", "acme-4"]  # the latest three by time
    assert first.to_json()["evidence_window"]["start"] == "2026-03-10T10:00:00Z"


def test_a_rule_named_like_integrity_alerts_is_refused() -> None:
    """A rule id equal to the integrity alerts' would mix their identities: refused."""
    pack = load_rules_text(
        """
rules:
  - id: integrity_violation
    kind: threshold
    title: t
    description: d
    severity: LOW
    filter: {field: action, equals: x}
    condition: {gte: 1}
    window: 1m
"""
    )
    with pytest.raises(ConfigError, match="integrity_violation"):
        Detector(pack, integrity=_config())


def load_rules_text(text: str) -> Any:
    """A rule pack from YAML text."""
    import tempfile  # noqa: PLC0415 - only this helper needs it
    from pathlib import Path  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(text, encoding="utf-8")
        return load_rules(path)


# --- replay and the sharded path agree ---------------------------------------------------------


def _traffic(seed: int) -> tuple[list[bytes], int]:
    """The bundled sample with three tenants' events signed (some tampered, some unsigned),
    plus a burst of forged failed logins; returns the lines and the number of forgeries."""
    rng = random.Random(seed)
    data = resources.files("rayworker").joinpath("data/sample_events.jsonl").read_bytes()
    keys = {"org-001": b"k-001", "org-002": b"k-002", "org-003": b"k-003"}
    lines: list[bytes] = []
    forged = 0
    for raw in data.splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            lines.append(raw)  # malformed lines stay: both paths must reject them alike
            continue
        tenant = event.get("organizationId") if isinstance(event, dict) else None
        if tenant not in keys:
            lines.append(raw)
            continue
        roll = rng.random()
        if roll < 0.05:
            lines.append(_line(event))  # unsigned: verify-if-present lets it through
            continue
        signed = _signed(event, keys[tenant])
        if roll < 0.10:
            signed["outcomeDescription"] = "nothing to see"
            forged += 1
        elif roll < 0.12:
            signed["signature"] = sign(signed["hash"], b"wrong-key")
            forged += 1
        lines.append(_line(signed))
    return lines, forged


TRAFFIC_CONFIG = IntegrityConfig(
    Policy.VERIFY_IF_PRESENT,
    {"org-003": Policy.REQUIRE},
    {"org-001": b"k-001", "org-002": b"k-002", "org-003": b"k-003"},
)


def _replay(lines: list[bytes], batch: int) -> tuple[AlertBook, MetricDeltas]:
    detector = Detector(builtin_pack(), clock=CLOCK, integrity=TRAFFIC_CONFIG)
    book, metrics = AlertBook(), MetricDeltas()
    for start in range(0, len(lines), batch):
        result = detector.process_lines(lines[start : start + batch], start_index=start)
        book.update(result.alerts)
        metrics.merge(result.metrics)
    book.update(detector.flush().alerts)
    return book, metrics


def _sharded(lines: list[bytes], batch: int, shards: int) -> tuple[AlertBook, MetricDeltas]:
    pack = builtin_pack()
    router = Partitioner(
        pack, Assignment.balanced(shards), DetectorConfig(), CLOCK, integrity=TRAFFIC_CONFIG
    )
    # Shards never screen, so they need no keys.
    detectors = [
        Detector(pack, config=DetectorConfig(max_future_s=None), clock=CLOCK) for _ in range(shards)
    ]
    book, metrics = AlertBook(), MetricDeltas()
    for start in range(0, len(lines), batch):
        part = router.split_lines(lines[start : start + batch], start_index=start)
        book.update(part.alerts)
        metrics.merge(part.metrics)
        for shard, sub in part.shards.items():
            result = detectors[shard].process_routed(
                sub.lines(), sub.wm_after, sub.owned, sub.watermarks
            )
            assert not _integrity_alerts(result.alerts)
            book.update(result.alerts)
            metrics.merge(result.metrics)
    for detector in detectors:
        final = detector.flush()
        book.update(final.alerts)
        metrics.merge(final.metrics)
    return book, metrics


def _state(book: AlertBook) -> dict[str, Any]:
    return {a.id: a.to_json() for a in book}


@pytest.mark.parametrize(("batch", "shards"), [(500, 2), (1000, 3), (257, 4)])
def test_replay_and_sharded_path_raise_the_same_integrity_alerts_once(
    batch: int, shards: int
) -> None:
    """Router plus shards give exactly the alerts and counts of one detector, violations once."""
    lines, forged = _traffic(seed=7)
    book, metrics = _replay(lines, batch)
    sharded_book, sharded_metrics = _sharded(lines, batch, shards)
    assert forged > 50
    assert sum(metrics.integrity_violations.values()) == forged
    assert sharded_metrics.integrity_violations == metrics.integrity_violations
    assert sharded_metrics.rejected == metrics.rejected
    assert sharded_metrics.events == metrics.events
    assert metrics.rejected[("org-003", "unsigned")] > 0
    assert _state(sharded_book) == _state(book)
    integrity = _integrity_alerts(book)
    assert {a.tenant_id for a in integrity} == {"org-001", "org-002", "org-003"}
    assert sum(a.occurrences for a in integrity) == forged


def test_integrity_alerts_do_not_depend_on_batch_split_or_a_restart() -> None:
    """Any batch split, and a snapshot/restore midway, give the same integrity alerts."""
    lines, _ = _traffic(seed=11)
    expected = _state(_replay(lines, 1000)[0])
    assert _state(_replay(lines, 37)[0]) == expected
    detector = Detector(builtin_pack(), clock=CLOCK, integrity=TRAFFIC_CONFIG)
    book = AlertBook()
    half = len(lines) // 2
    book.update(detector.process_lines(lines[:half]).alerts)
    snapshot = json.loads(json.dumps(detector.snapshot()))
    assert snapshot["integrity"]
    restored = Detector.restore(builtin_pack(), snapshot, clock=CLOCK, integrity=TRAFFIC_CONFIG)
    book.update(restored.process_lines(lines[half:], start_index=half).alerts)
    book.update(restored.flush().alerts)
    assert _state(book) == expected


def test_partitioner_snapshot_keeps_open_integrity_alerts() -> None:
    """A restarted router continues its open integrity alerts instead of starting new ones."""
    config = _config()
    forged = [
        _line({**_signed(_event(n, seconds=n), KEYS["acme"]), "action": "x"}) for n in range(4)
    ]
    router = Partitioner(builtin_pack(), Assignment.balanced(2), clock=CLOCK, integrity=config)
    router.split_lines(forged[:2])
    again = Partitioner(builtin_pack(), Assignment.balanced(2), clock=CLOCK, integrity=config)
    again.restore(json.loads(json.dumps(router.snapshot())))
    [alert] = again.split_lines(forged[2:]).alerts
    assert alert.occurrences == 4


# --- metrics ---------------------------------------------------------------------------------


def test_violations_reach_the_metrics_store_and_prometheus() -> None:
    """integrity_violations is a per-tenant counter, a series, and a Prometheus counter."""
    deltas = MetricDeltas()
    deltas.integrity_violations.update({"acme": 2, "hooli": 1})
    store = MemoryMetricsStore(clock=CLOCK)

    async def scenario() -> tuple[Any, Any, Any, list[tuple[datetime, int]]]:
        await store.record(deltas, at=CLOCK.now())
        series = await store.series(
            "integrity_violations",
            "acme",
            since=CLOCK.now(),
            until=CLOCK.now() + timedelta(minutes=1),
        )
        return (
            await store.snapshot(None),
            await store.snapshot("acme"),
            await store.snapshot("hooli"),
            series,
        )

    overall, acme, hooli, series = asyncio.run(scenario())
    assert (overall.integrity_violations, acme.integrity_violations) == (3, 2)
    assert hooli.to_json()["integrity_violations"] == 1
    assert series[0][1] == 2
    text = render_prometheus(None, {None: overall, "acme": acme, "hooli": hooli})
    assert "# TYPE rayworker_integrity_violations_total counter" in text
    assert 'rayworker_integrity_violations_total{tenant="acme"} 2' in text
    assert "rayworker_integrity_violations_total 3" in text
