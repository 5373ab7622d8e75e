"""The built-in pack: each rule's boundaries, the original's scenarios, and its defects fixed.

Timelines are written in seconds from T0; ``events(...)`` turns them into JSON lines.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from rayworker.alerts import Alert, AlertBook
from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.errors import RuleError
from rayworker.rules import builtin_pack, load_overrides, parse_rules

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC: business hours
CLOCK = FixedClock(datetime(2026, 1, 6, tzinfo=UTC))


def ev(at: float, action: str, status: str, **extra: Any) -> bytes:
    """One event ``at`` seconds after T0 (or at an absolute datetime)."""
    stamp = T0 + timedelta(seconds=at)
    event: dict[str, Any] = {
        "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        "action": action,
        "status": status,
        "organizationId": extra.pop("org", "org-1"),
    }
    if "ip" in extra:
        event["sessionContext"] = {"ipAddress": extra.pop("ip")}
    event.update(extra)
    return msgspec.json.encode(event)


def fails(n: int, *, every: float = 10.0, start: float = 0.0, **extra: Any) -> list[bytes]:
    """``n`` failed logins, ``every`` seconds apart."""
    extra.setdefault("principalId", "alice")
    return [ev(start + k * every, "auth.login.failure", "failure", **extra) for k in range(n)]


def detect(lines: list[bytes], overrides: Any = None, **config: Any) -> list[Alert]:
    """Run the built-in pack over the lines in one batch, then flush."""
    det = Detector(builtin_pack(), overrides, DetectorConfig(**config), CLOCK)
    book = AlertBook()
    book.update(det.process_lines(lines).alerts)
    book.update(det.flush().alerts)
    return book.sorted()


def only(alerts: list[Alert], rule_id: str) -> list[Alert]:
    """The alerts of one rule."""
    return [a for a in alerts if a.rule_id == rule_id]


# --- failed_auth ---------------------------------------------------------------------------


def test_failed_auth_fires_at_threshold() -> None:
    """Five failed logins by one principal within 5 minutes give one HIGH alert."""
    alerts = only(detect(fails(5)), "failed_auth")
    assert len(alerts) == 1
    assert alerts[0].severity == "HIGH"
    assert alerts[0].group == {"source": "alice"}
    assert alerts[0].count == 5
    assert len(alerts[0].evidence_ids) == 5


def test_failed_auth_silent_below_threshold() -> None:
    """Four failed logins (threshold - 1) give no alert: the new event is not counted twice."""
    assert only(detect(fails(4)), "failed_auth") == []


def test_failed_auth_window_edge() -> None:
    """Five failures spanning exactly 5 minutes do not fire; spanning 1 ms less they do."""
    assert only(detect(fails(5, every=75.0)), "failed_auth") == []
    assert len(only(detect(fails(5, every=74.99975)), "failed_auth")) == 1


def test_failed_auth_groups_by_ip_without_principal() -> None:
    """Failures without a principal are grouped by IP address."""
    lines = [ev(k, "auth.login.failure", "failure", ip="10.9.9.9") for k in range(5)]
    (alert,) = only(detect(lines), "failed_auth")
    assert alert.group == {"source": "10.9.9.9"}


# --- unauthorized_access -------------------------------------------------------------------


def test_unauthorized_access_boundaries() -> None:
    """Three denials in 10 minutes fire CRITICAL; two do not; three over 10 minutes do not."""
    deny = {"principalId": "bob", "outcomeDescription": "Access denied - unauthorized"}
    three = [ev(k * 60, "data.read", "failure", **deny) for k in range(3)]
    (alert,) = only(detect(three), "unauthorized_access")
    assert alert.severity == "CRITICAL"
    assert only(detect(three[:2]), "unauthorized_access") == []
    spread = [ev(k * 300, "data.read", "failure", **deny) for k in range(3)]
    assert only(detect(spread), "unauthorized_access") == []


def test_unauthorized_access_precise_text() -> None:
    """'authorized' or a successful read with such text is not an access denial."""
    lines = [
        ev(k, "data.read", "failure", principalId="bob", outcomeDescription="not authorized yet")
        for k in range(3)
    ] + [
        ev(k, "data.read", "success", principalId="eve", outcomeDescription="forbidden")
        for k in range(3)
    ]
    assert only(detect(lines), "unauthorized_access") == []


# --- data_velocity -------------------------------------------------------------------------


def test_data_velocity_boundaries() -> None:
    """50 reads in a minute fire MEDIUM; 49 do not; 50 spread over more than 1 minute do not."""
    reads = [ev(k, "fhir.patient.read", "success", principalId="carol") for k in range(50)]
    (alert,) = only(detect(reads), "data_velocity")
    assert alert.severity == "MEDIUM"
    assert only(detect(reads[:49]), "data_velocity") == []
    slow = [ev(k * 1.25, "data.read", "success", principalId="carol") for k in range(50)]
    assert only(detect(slow), "data_velocity") == []


def test_data_velocity_precise_predicate() -> None:
    """Updates with a targetResourceType are not reads (the original counted them)."""
    lines = [
        ev(k, "data.update", "success", principalId="carol", targetResourceType="Patient")
        for k in range(60)
    ]
    assert only(detect(lines), "data_velocity") == []


# --- bulk_operation ------------------------------------------------------------------------


def test_bulk_operation_boundaries() -> None:
    """100 exports in 5 minutes in a tenant fire MEDIUM; 99 do not; failed exports don't count."""
    exports = [
        ev(k, "data.export", "success", principalId=f"p{k % 10}", recordCount=50)
        for k in range(100)
    ]
    (alert,) = only(detect(exports), "bulk_operation")
    assert alert.severity == "MEDIUM"
    assert alert.group == {}
    assert only(detect(exports[:99]), "bulk_operation") == []
    failed = [ev(k, "data.export", "failure", principalId="p") for k in range(100)]
    assert only(detect(failed), "bulk_operation") == []


# --- off_hours -----------------------------------------------------------------------------


def test_off_hours_boundaries_utc() -> None:
    """Access at 22:00 and 05:59 UTC is off-hours; 21:59 and 06:00 are not."""
    night = T0.replace(hour=0)

    def read_at(hour: int, minute: int) -> bytes:
        at = (night.replace(hour=hour, minute=minute) - T0).total_seconds()
        return ev(at, "data.read", "success", principalId="dave")

    assert len(only(detect([read_at(22, 0)]), "off_hours")) == 1
    assert len(only(detect([read_at(5, 59)]), "off_hours")) == 1
    assert only(detect([read_at(21, 59)]), "off_hours") == []
    assert only(detect([read_at(6, 0)]), "off_hours") == []


def test_off_hours_uses_tenant_timezone(tmp_path: Any) -> None:
    """22:30 UTC is off-hours in UTC but business hours in New York (17:30 local)."""
    path = tmp_path / "overrides.yaml"
    path.write_text("tenants:\n  org-ny:\n    timezone: America/New_York\n")
    overrides = load_overrides(path, builtin_pack())
    at = (T0.replace(hour=22, minute=30) - T0).total_seconds()
    lines = [
        ev(at, "data.read", "success", principalId="x", org="org-ny"),
        ev(at, "data.read", "success", principalId="x", org="org-utc"),
    ]
    alerts = only(detect(lines, overrides), "off_hours")
    assert [a.tenant_id for a in alerts] == ["org-utc"]


# --- password_spraying and brute_force_success ----------------------------------------------


def test_password_spraying_counts_distinct_principals() -> None:
    """One IP failing for 10 distinct principals fires; 9 principals (many times) do not."""
    ten = [
        ev(k * 5, "auth.login.failure", "failure", principalId=f"u{k}", ip="6.6.6.6")
        for k in range(10)
    ]
    (alert,) = only(detect(ten), "password_spraying")
    assert alert.group == {"sessionContext.ipAddress": "6.6.6.6"}
    assert alert.count == 10
    nine = [
        ev(k, "auth.login.failure", "failure", principalId=f"u{k % 9}", ip="6.6.6.6")
        for k in range(40)
    ]
    assert only(detect(nine), "password_spraying") == []


def test_brute_force_success_needs_order() -> None:
    """Five failures then a success fire CRITICAL; the success before the failures does not."""
    failures = fails(5, every=5.0, principalId="mallory")
    success = ev(30, "auth.login.success", "success", principalId="mallory")
    (alert,) = only(detect([*failures, success]), "brute_force_success")
    assert alert.severity == "CRITICAL"
    early = ev(-1, "auth.login.success", "success", principalId="mallory")
    assert only(detect([early, *failures]), "brute_force_success") == []
    assert only(detect([*failures[:4], success]), "brute_force_success") == []


# --- the original's scenarios (reference section 11) -----------------------------------------


def test_original_six_failures_give_high_failed_auth() -> None:
    """6 failed logins by one principal: a SECURITY/HIGH alert whose title names FAILED_AUTH."""
    (alert,) = only(detect(fails(6, every=1.0)), "failed_auth")
    assert (alert.type, alert.severity) == ("SECURITY", "HIGH")
    assert "FAILED_AUTH" in alert.title
    assert only(detect(fails(3, every=1.0)), "failed_auth") == []


def test_original_access_denied_gives_critical() -> None:
    """4 failures 'Access denied - unauthorized' on data.read give CRITICAL UNAUTHORIZED_ACCESS."""
    lines = [
        ev(
            k,
            "data.read",
            "failure",
            principalId="u",
            outcomeDescription="Access denied - unauthorized",
        )
        for k in range(4)
    ]
    (alert,) = only(detect(lines), "unauthorized_access")
    assert "UNAUTHORIZED_ACCESS" in alert.title
    assert alert.severity == "CRITICAL"


def test_original_sixty_fhir_reads_give_data_velocity() -> None:
    """60 fhir.patient.read in a minute give a MEDIUM DATA_VELOCITY, on event time."""
    lines = [ev(k, "fhir.patient.read", "success", principalId="u") for k in range(60)]
    (alert,) = only(detect(lines), "data_velocity")
    assert "DATA_VELOCITY" in alert.title
    assert alert.occurrences == 11


def test_original_one_read_at_23_gives_off_hours() -> None:
    """One data.read at 23:00 gives a LOW OFF_HOURS alert."""
    at = (T0.replace(hour=23) - T0).total_seconds()
    (alert,) = only(detect([ev(at, "data.read", "success", principalId="u")]), "off_hours")
    assert (alert.severity, "OFF_HOURS" in alert.title) == ("LOW", True)


def test_original_110_exports_give_bulk_operation() -> None:
    """110 data.export (recordCount 50, 10 principals) give a MEDIUM BULK_OPERATION."""
    lines = [
        ev(k, "data.export", "success", principalId=f"p{k % 10}", recordCount=50)
        for k in range(110)
    ]
    (alert,) = only(detect(lines), "bulk_operation")
    assert "BULK_OPERATION" in alert.title


def test_original_custom_threshold_two(tmp_path: Any) -> None:
    """With failed_auth at threshold 2 (an override), 3 failures give an alert."""
    path = tmp_path / "o.yaml"
    path.write_text("tenants:\n  org-1:\n    rules:\n      failed_auth: {threshold: 2}\n")
    overrides = load_overrides(path, builtin_pack())
    assert len(only(detect(fails(3), overrides), "failed_auth")) == 1
    assert only(detect(fails(1), overrides), "failed_auth") == []


# --- the original's detection defects (reference section 10) --------------------------------


def test_defect_1_no_double_count() -> None:
    """Threshold 2 never fires on a single event (the original counted the new event twice)."""
    assert only(detect(fails(4)), "failed_auth") == []


def test_defect_2_event_time_not_wall_clock() -> None:
    """A replay of last year's attack still fires; the alert carries event times."""
    old = [
        ev(-400 * 86400 + k, "auth.login.failure", "failure", principalId="old") for k in range(5)
    ]
    (alert,) = only(detect(old), "failed_auth")
    assert alert.first_seen == T0 - timedelta(days=400) + timedelta(seconds=4)


def test_defect_2_naive_timestamp_is_utc_not_local() -> None:
    """A timestamp without offset is read as UTC (and counted), never as local time."""
    line = (
        b'{"timestamp":"2026-01-05T23:00:00","action":"data.read","status":"success",'
        b'"organizationId":"org-1","principalId":"u"}'
    )
    det = Detector(builtin_pack(), clock=CLOCK)
    result = det.process_lines([line])
    assert result.metrics.naive_timestamps["org-1"] == 1
    (alert,) = only(result.alerts, "off_hours")
    assert alert.first_seen == datetime(2026, 1, 5, 23, 0, tzinfo=UTC)


def test_defect_2_future_dated_events_are_rejected() -> None:
    """An event far ahead of the clock is rejected and cannot blind the tenant's detection."""
    future = ev(86400 * 30, "data.read", "success", principalId="u")
    det = Detector(builtin_pack(), clock=FixedClock(T0))
    result = det.process_lines([future, *fails(5)])
    assert [r.reason.value for r in result.rejections] == ["future_timestamp"]
    assert len(only(result.alerts, "failed_auth")) == 1


def test_defect_4_every_group_over_threshold_is_reported() -> None:
    """Two principals over threshold give two alerts, not just the first group."""
    lines = fails(5, principalId="a") + fails(5, principalId="b")
    assert sorted(a.group["source"] for a in only(detect(lines), "failed_auth")) == ["a", "b"]


def test_defect_5_tenants_never_mix() -> None:
    """Three failures in each of two tenants for the same principal give no alert."""
    lines = fails(3, org="org-a", principalId="shared") + fails(
        3, org="org-b", principalId="shared"
    )
    assert only(detect(lines), "failed_auth") == []
    exports = [ev(k, "data.export", "success", org=f"org-{k % 2}") for k in range(150)]
    assert only(detect(exports), "bulk_operation") == []


def test_defect_6_suppression_is_per_tenant_and_counts_occurrences() -> None:
    """Each tenant gets its own alert; a storm of 20 failures is one alert with occurrences."""
    lines = fails(20, every=1.0, org="org-a") + fails(5, every=1.0, org="org-b")
    alerts = only(detect(lines), "failed_auth")
    assert sorted(a.tenant_id for a in alerts) == ["org-a", "org-b"]
    storm = next(a for a in alerts if a.tenant_id == "org-a")
    assert storm.occurrences == 16


def test_defect_6_new_alert_after_suppression_period() -> None:
    """Hits in the next suppression period make a second alert with a different id."""
    lines = fails(5, every=1.0) + fails(5, every=1.0, start=600.0)
    alerts = only(detect(lines), "failed_auth")
    assert len(alerts) == 2
    assert alerts[0].id != alerts[1].id


def test_defect_7_off_hours_start_equal_end_is_refused() -> None:
    """Business hours with start == end are refused with a message saying why."""
    rule = builtin_pack().get("off_hours").model_dump(mode="json", by_alias=True)
    rule["business_hours"] = {"start": "06:00", "end": "06:00"}
    with pytest.raises(RuleError, match="business_hours"):
        parse_rules({"rules": [rule]}, origin="test")


def test_late_events_are_reported_not_dropped() -> None:
    """An event older than the tenant's watermark is reported as late and counted."""
    det = Detector(builtin_pack(), clock=CLOCK)
    det.process_lines([ev(600, "data.read", "success", principalId="u")])
    result = det.process_lines([ev(0, "data.read", "success", principalId="u")])
    assert len(result.late) == 1
    assert result.metrics.late["org-1"] == 1


def test_out_of_order_within_lateness_is_placed() -> None:
    """Failures arriving out of order within the lateness still fire."""
    lines = fails(5, every=5.0)
    shuffled = [lines[4], lines[0], lines[3], lines[1], lines[2]]
    assert len(only(detect(shuffled), "failed_auth")) == 1


def test_redelivered_event_is_not_counted_twice() -> None:
    """The same event delivered five times counts once."""
    assert only(detect(fails(1) * 5), "failed_auth") == []


def test_alert_ids_are_deterministic() -> None:
    """The same input gives the same alert ids."""
    lines = fails(7) + [ev(k, "fhir.patient.read", "success", principalId="c") for k in range(55)]
    assert [a.id for a in detect(lines)] == [a.id for a in detect(lines)]
