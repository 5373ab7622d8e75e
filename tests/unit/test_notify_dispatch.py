"""Routing, Alertmanager grouping, silences and de-duplication of notifications (pure, with
time passed in explicitly).

Timeline of the basic case (group_wait 30 s, group_interval 300 s, repeat_interval 3600 s)::

    t=0      50 alerts arrive ....... nothing sent (group_wait)
    t=30     one message, 50 alerts
    t=60     alert 51 arrives ....... nothing sent (group_interval not over)
    t=330    one message, 51 alerts
    t=630    nothing (unchanged, repeat_interval not over), and so every 300 s until
    t=4230   the same 51 alerts again (more than repeat_interval after t=330)
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from rayworker.alerts import Alert, alert_id, fingerprint
from rayworker.notify import Dispatcher, NotifyConfig, Silences, parse_notify_config
from rayworker.notify.silences import new_silence

T0 = 1_795_000_000.0  # 2026-11-18T..Z: the notifier's clock at the start of each test


def make_alert_object(
    i: int = 0,
    *,
    tenant: str = "org-1",
    rule: str = "failed_auth",
    severity: str = "HIGH",
    tags: tuple[str, ...] = ("suspicious-pattern", "failed-auth"),
    principal: str | None = None,
    first_seen_s: float = T0,
    status: str = "active",
) -> Alert:
    """A real Alert, as the detector makes it and the pipeline persists it."""
    who = principal or f"user-{i}"
    group = {"source": who}
    fp = fingerprint(tenant, rule, group)
    start_us = int(first_seen_s * 1_000_000)
    return Alert(
        id=alert_id(fp, start_us - start_us % 300_000_000),
        fingerprint=fp,
        tenant_id=tenant,
        rule_id=rule,
        rule_version="v1",
        group=group,
        severity=severity,
        type="SECURITY",
        title=f"Suspicious Pattern Detected: {rule.upper()}",
        description=f"5 failed authentication attempts detected from {who} within 300 seconds",
        tags=list(tags),
        first_seen_us=start_us,
        last_seen_us=start_us,
        occurrences=1,
        count=5,
        evidence_ids=[f"ev-{i}-{k}" for k in range(5)],
        window_start_us=start_us - 300_000_000,
        window_end_us=start_us,
        watermark_us=start_us,
        period_start_us=start_us - start_us % 300_000_000,
        period_end_us=start_us - start_us % 300_000_000 + 300_000_000,
        status=status,
        metadata={"organizationId": tenant, **group},
    )


def make_alert(i: int = 0, **kwargs: Any) -> dict[str, Any]:
    """The JSON of :func:`make_alert_object` (what the notifier reads)."""
    return make_alert_object(i, **kwargs).to_json()


def config(**route: Any) -> NotifyConfig:
    """One tenant (org-1) with one webhook receiver and one route."""
    base: dict[str, Any] = {
        "receivers": ["hook"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "1h",
    }
    base.update(route)
    return parse_notify_config(
        {
            "tenants": {
                "org-1": {
                    "receivers": [
                        {
                            "name": "hook",
                            "type": "webhook",
                            "url": "http://x.test/h",
                            "secret": "k" * 16,
                        }
                    ],
                    "routes": [base],
                }
            }
        }
    )


def deliver_all(d: Dispatcher, now: float, *, ok: bool = True) -> list[Any]:
    """Flush what is due and report every delivery as done."""
    sent = d.due(now)
    for n in sent:
        d.complete(n, ok=ok, now=now)
    return sent


def test_storm_of_50_alerts_becomes_one_message() -> None:
    """Fifty alerts arriving together are sent once, after group_wait, in one message."""
    d = Dispatcher(config())
    d.ingest([make_alert(i) for i in range(50)], T0)
    assert d.due(T0 + 29) == []
    sent = deliver_all(d, T0 + 30)
    assert len(sent) == 1
    assert len(sent[0].firing) == 50
    assert {a["id"] for a in sent[0].firing} == {make_alert(i)["id"] for i in range(50)}


def test_group_interval_batches_later_alerts_and_repeat_interval_resends() -> None:
    """A later alert waits for group_interval; an unchanged group is re-sent after repeat."""
    d = Dispatcher(config())
    d.ingest([make_alert(i) for i in range(50)], T0)
    deliver_all(d, T0 + 30)
    d.ingest([make_alert(50)], T0 + 60)
    assert deliver_all(d, T0 + 60) == []
    d.ingest([make_alert(i) for i in range(50)], T0 + 200)  # still firing: updates
    assert deliver_all(d, T0 + 329) == []
    second = deliver_all(d, T0 + 330)
    assert [len(n.firing) for n in second] == [51]
    # Keep the alerts firing (updates extend their end) without changing the group.
    # The last message went out at t=330; the first flush more than an hour later is t=4230.
    for t in range(630, 4231, 300):
        d.ingest([make_alert(i) for i in range(51)], T0 + t - 1)
        sent = deliver_all(d, T0 + t)
        assert len(sent) == (1 if t == 4230 else 0)


def test_alert_older_than_group_wait_flushes_a_new_group_at_once() -> None:
    """An alert whose start is more than group_wait in the past needs no waiting."""
    d = Dispatcher(config())
    d.ingest([make_alert(1, first_seen_s=T0 - 3600)], T0)
    assert len(deliver_all(d, T0)) == 1


def test_group_by_splits_groups() -> None:
    """group_by [rule_id] makes one message per rule."""
    d = Dispatcher(config(group_by=["rule_id"]))
    d.ingest([make_alert(i, rule="failed_auth") for i in range(3)], T0)
    d.ingest([make_alert(i, rule="password_spraying") for i in range(2)], T0)
    sent = deliver_all(d, T0 + 30)
    assert sorted(len(n.firing) for n in sent) == [2, 3]
    assert sorted(n.group_labels["rule_id"] for n in sent) == ["failed_auth", "password_spraying"]


def test_tenants_never_see_each_others_alerts() -> None:
    """Tenant A's routes receive only A's alerts; a tenant without routes gets nothing."""
    cfg = parse_notify_config(
        {
            "tenants": {
                t: {
                    "receivers": [
                        {
                            "name": "hook",
                            "type": "webhook",
                            "url": f"http://{t}.test",
                            "secret": "s" * 8,
                        }
                    ],
                    "routes": [{"receivers": ["hook"], "group_wait": "1s"}],
                }
                for t in ("org-a", "org-b")
            }
        }
    )
    d = Dispatcher(cfg)
    d.ingest([make_alert(i, tenant="org-a") for i in range(3)], T0)
    d.ingest([make_alert(i, tenant="org-b") for i in range(2)], T0)
    d.ingest([make_alert(9, tenant="org-c")], T0)
    sent = deliver_all(d, T0 + 1)
    by_tenant = {n.tenant: {a["tenant_id"] for a in n.firing} for n in sent}
    assert by_tenant == {"org-a": {"org-a"}, "org-b": {"org-b"}}
    assert d.counts["unrouted"] == 1


def test_route_match_on_severity_rules_tags_and_continue() -> None:
    """Routes match on minimum severity, rule ids and tags; the first match wins unless
    continue is set."""
    cfg = parse_notify_config(
        {
            "tenants": {
                "org-1": {
                    "receivers": [
                        {"name": n, "type": "webhook", "url": "http://x.test", "secret": "s" * 8}
                        for n in ("crit", "spray", "all")
                    ],
                    "routes": [
                        {
                            "receivers": ["crit"],
                            "match": {"min_severity": "CRITICAL"},
                            "continue": True,
                        },
                        {"receivers": ["spray"], "match": {"rule_ids": ["password_spraying"]}},
                        {"receivers": ["all"], "match": {"tags": ["failed-auth"]}},
                    ],
                }
            }
        }
    )
    d = Dispatcher(cfg)
    d.ingest([make_alert(1, severity="CRITICAL")], T0)
    d.ingest([make_alert(2, rule="password_spraying")], T0)
    d.ingest([make_alert(3)], T0)
    d.ingest([make_alert(4, tags=("other",))], T0)
    sent = deliver_all(d, T0 + 30)
    got = {n.receiver: sorted(a["group"]["source"] for a in n.firing) for n in sent}
    assert got == {"crit": ["user-1"], "spray": ["user-2"], "all": ["user-1", "user-3"]}


def test_silence_suppresses_its_matches_and_nothing_else() -> None:
    """An active silence removes the alerts it matches; others are still sent."""
    silences = Silences()
    silences.add(
        new_silence(
            "org-1",
            ["group.source=~user-[0-4]"],
            starts_at=T0 - 1,
            ends_at=T0 + 3600,
            created_by="alice",
            comment="pen test",
            now=T0 - 1,
        )
    )
    # Another tenant's silence with the same matcher mutes nothing here.
    silences.add(
        new_silence(
            "org-2",
            ["rule_id=failed_auth"],
            starts_at=T0 - 1,
            ends_at=T0 + 3600,
            created_by="bob",
            comment="other tenant",
            now=T0 - 1,
        )
    )
    d = Dispatcher(config(), silences)
    d.ingest([make_alert(i) for i in range(10)], T0)
    sent = deliver_all(d, T0 + 30)
    assert sorted(a["group"]["source"] for a in sent[0].firing) == [
        f"user-{i}" for i in range(5, 10)
    ]
    assert d.counts["silenced"] == 5


def test_all_silenced_sends_nothing_and_expiry_lets_alerts_through() -> None:
    """A group whose alerts are all silenced sends nothing; once the silence expires they
    are new to the receiver and are sent at the next flush."""
    silences = Silences()
    silence = new_silence(
        "org-1",
        ["rule_id=failed_auth"],
        starts_at=T0,
        ends_at=T0 + 100,
        created_by="a",
        comment="maintenance",
        now=T0,
    )
    silences.add(silence)
    d = Dispatcher(config(group_interval="60s"), silences)
    d.ingest([make_alert(1)], T0)
    assert deliver_all(d, T0 + 30) == []
    silences.expire("org-1", silence.id, T0 + 50)
    d.ingest([make_alert(1)], T0 + 80)
    assert [len(n.firing) for n in deliver_all(d, T0 + 90)] == [1]


def test_resolved_notification_only_when_the_route_asks() -> None:
    """send_resolved: true sends a resolved message; false sends nothing on resolve."""
    for send_resolved, expected in ((True, 1), (False, 0)):
        d = Dispatcher(config(send_resolved=send_resolved, group_interval="60s"))
        d.ingest([make_alert(1)], T0)
        assert len(deliver_all(d, T0 + 30)) == 1
        d.ingest([make_alert(1, status="resolved")], T0 + 40)
        sent = deliver_all(d, T0 + 90)
        assert len(sent) == expected
        if sent:
            assert sent[0].status == "resolved"
            assert sent[0].resolved[0]["notification_status"] == "resolved"
        assert d.groups == {}  # the resolved alert is forgotten once notified


def test_resolve_timeout_ends_alerts_without_updates() -> None:
    """An alert not updated for resolve_timeout counts as resolved."""
    d = Dispatcher(config(send_resolved=True, group_interval="60s"))
    d.ingest([make_alert(1)], T0)
    deliver_all(d, T0 + 30)
    assert deliver_all(d, T0 + 90) == []
    sent = deliver_all(d, T0 + 330)  # resolve_timeout 300 s after T0
    assert [n.status for n in sent] == ["resolved"]


def test_failed_delivery_is_retried_at_the_next_flush_with_the_same_key() -> None:
    """A failed delivery is not logged: the next flush sends it again, same idempotency key;
    after a success the next message gets a new key."""
    d = Dispatcher(config(group_interval="60s"))
    d.ingest([make_alert(1)], T0)
    first = deliver_all(d, T0 + 30, ok=False)
    again = deliver_all(d, T0 + 90)
    assert [n.idempotency_key for n in again] == [first[0].idempotency_key]
    d.ingest([make_alert(2)], T0 + 100)
    third = deliver_all(d, T0 + 150)
    assert third[0].idempotency_key != first[0].idempotency_key


def test_group_in_flight_does_not_flush_again() -> None:
    """While a flush is being delivered, the group is not flushed a second time."""
    d = Dispatcher(config(group_interval="60s"))
    d.ingest([make_alert(1)], T0)
    pending = d.due(T0 + 30)
    d.ingest([make_alert(2)], T0 + 40)
    assert d.due(T0 + 200) == []
    d.complete(pending[0], ok=True, now=T0 + 201)
    assert [len(n.firing) for n in d.due(T0 + 201)] == [2]


def test_flush_all_sends_waiting_groups_now() -> None:
    """flush_all (used on stop) does not wait for group_wait."""
    d = Dispatcher(config())
    d.ingest([make_alert(1)], T0)
    assert len(d.flush_all(T0 + 1)) == 1


def test_snapshot_and_restore_continue_identically() -> None:
    """A dispatcher restored from a snapshot makes the same decisions as the original."""
    cfg = config(group_interval="60s")
    a = Dispatcher(cfg)
    a.ingest([make_alert(i) for i in range(5)], T0)
    deliver_all(a, T0 + 30)
    a.ingest([make_alert(9)], T0 + 40)
    b = Dispatcher.restore(cfg, a.snapshot())
    for d in (a, b):
        d.ingest([make_alert(i) for i in range(6)], T0 + 80)
    left, right = deliver_all(a, T0 + 90), deliver_all(b, T0 + 90)
    assert [(n.idempotency_key, len(n.firing)) for n in left] == [
        (n.idempotency_key, len(n.firing)) for n in right
    ]
    assert a.snapshot() == b.snapshot()


def test_redaction_removes_principals_and_ips_from_fields_and_text() -> None:
    """A route with redaction sends no principal id or IP, in fields or in text."""
    d = Dispatcher(
        config(
            group_by=["group.source"],
            redact={"principal_ids": True, "ips": True, "fields": ["metadata.organizationId"]},
        )
    )
    d.ingest(
        [make_alert(1, principal="alice@example.com"), make_alert(2, principal="10.1.2.3")], T0
    )
    sent = deliver_all(d, T0 + 30)
    text = repr([(n.group_labels, n.firing) for n in sent])
    assert "alice@example.com" not in text
    assert "10.1.2.3" not in text
    assert "[redacted]" in sent[0].firing[0]["description"]
    assert sent[0].firing[0]["metadata"]["organizationId"] == "[redacted]"
    assert sent[0].firing[0]["evidence"]  # evidence ids are kept


def test_redaction_key_gives_stable_pseudonyms() -> None:
    """With a key, the same principal always becomes the same pseudonym."""
    d = Dispatcher(config(redact={"principal_ids": True, "key": "pseudonym-key"}))
    d.ingest([make_alert(1, principal="bob"), make_alert(2, principal="bob", rule="x_rule")], T0)
    firing = deliver_all(d, T0 + 30)[0].firing
    names = {a["group"]["source"] for a in firing}
    assert len(names) == 1
    assert next(iter(names)).startswith("[redacted:")


def test_gc_forgets_old_log_entries() -> None:
    """Notification-log entries are dropped after twice the repeat interval."""
    d = Dispatcher(config())
    d.ingest([make_alert(1)], T0)
    deliver_all(d, T0 + 30)
    assert d.gc(T0 + 7000) == 0
    assert d.gc(T0 + 30 + 7200) == 1


@pytest.mark.parametrize("bad", [{"status": "active"}, {"tenant_id": "", "id": "x"}])
def test_malformed_alerts_are_counted_not_raised(bad: dict[str, Any]) -> None:
    """An alert without tenant or id is counted as malformed."""
    d = Dispatcher(config())
    assert d.ingest([bad], T0) == 0
    assert d.counts["malformed"] == 1


def test_a_huge_storm_stays_one_bounded_message() -> None:
    """1,500 alerts: one message carrying 1,000 in full and naming the other 500 by id."""
    from rayworker.notify.render import webhook_body  # noqa: PLC0415 - only this test

    d = Dispatcher(config())
    d.ingest([make_alert(i) for i in range(1500)], T0)
    (sent,) = deliver_all(d, T0 + 30)
    assert (len(sent.firing), len(sent.firing_ids), sent.omitted) == (1000, 1500, 500)
    body = json.loads(webhook_body(sent))
    assert (body["firing"], len(body["alerts"]), body["truncated_alerts"]) == (1500, 1000, 500)
    assert len(body["truncated_alert_ids"]) == 500


def test_default_routes_keep_each_tenant_in_its_own_messages() -> None:
    """Tenants using the default routes share the receiver, never a message."""
    cfg = parse_notify_config(
        {
            "default": {
                "receivers": [
                    {"name": "hook", "type": "webhook", "url": "http://x.test", "secret": "s" * 8}
                ],
                "routes": [{"receivers": ["hook"], "group_wait": "1s"}],
            }
        }
    )
    d = Dispatcher(cfg)
    d.ingest([make_alert(i, tenant=t) for i in range(3) for t in ("org-a", "org-b", "org-c")], T0)
    sent = deliver_all(d, T0 + 1)
    assert sorted(n.tenant for n in sent) == ["org-a", "org-b", "org-c"]
    for n in sent:
        assert {a["tenant_id"] for a in n.firing} == {n.tenant}
        assert len(n.firing) == 3
